"""The pipeline: source → decode → ``Router.split`` → hot, warm and cold paths on Ray.

The driver loop, per source block:

1. decode the block in bulk (bad lines become dead letters with their raw bytes);
2. split the good rows by temperature with the router (``now`` from the pipeline's clock);
3. hand each part to its path: hot actors by key group, the warm micro-batcher, the lake writer
   (which also takes the block's dead letters);
4. collect acknowledgements; a block is done when all three paths have acknowledged it, and
   :meth:`Pipeline.done_positions` moves over finished prefixes of each source partition.

Every hand-off is bounded: hot calls in flight per actor, warm buffer rows/bytes and tasks in
flight, lake writer calls in flight and buffered rows/bytes. A full bound makes the driver wait
instead of reading further from the source (backpressure), so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import ray

from engine.cold import ColdWriter, FlushReport
from engine.config import PipelineConfig
from engine.hot import HotPath
from engine.lake import file_stem
from engine.positions import PositionTracker
from engine.sources import FileSource, Source, SourceBlock, SyntheticSource
from engine.warm import WarmPath
from routers import DEAD_LETTER_SCHEMA, DecodeHints, Router, decode_ndjson

__all__ = ["Pipeline", "Progress", "RunSummary", "init_local_ray", "source_from_config"]

#: Lake-writer calls in flight (each one block of cold rows): enough to cover a flush (~0.3 s).
_COLD_IN_FLIGHT = 8
_PATHS = 3  # hot, warm, cold


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray on 127.0.0.1 (the embedded default) unless one is already up.

    ``address="local"`` never joins a stale cluster left by a crashed run (PLATFORM_NOTES).
    """
    if ray.is_initialized():
        return
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )


def source_from_config(config: PipelineConfig, start_ms: int | None = None) -> Source:
    """The source a config describes."""
    s = config.source
    if s.kind == "file":
        assert s.path is not None  # checked at load
        return FileSource(s.path, s.format, s.block_rows)
    return SyntheticSource(
        events=s.events,
        players=s.players,
        seed=s.seed,
        start_ms=start_ms,
        rate=s.rate,
        block_rows=s.block_rows,
        partitions=s.partitions,
        late_share=s.late_share,
        stale_share=s.stale_share,
        malformed_share=s.malformed_share,
        iso_time_share=s.iso_time_share,
        event_mix=s.event_mix,
    )


@dataclass
class Progress:
    """A live view of the pipeline, passed to the progress callback."""

    elapsed_s: float
    events_in: int
    routed: dict[str, int]
    dead_letter: int
    done: dict[str, int]
    hot_calls_in_flight: int
    warm_buffered_rows: int
    warm_tasks_in_flight: int
    cold_calls_in_flight: int
    open_blocks: int


@dataclass
class RunSummary:
    """What a run did; ``to_json()`` is what ``thermocline run --json`` prints."""

    events_in: int
    hot: int
    warm: int
    cold: int
    dead_letter: int
    per_rule: dict[str, int]
    elapsed_s: float
    lake_uri: str
    done_positions: dict[str, int]
    hot_latency_ms: dict[str, float | None]
    alerts: int
    outputs: dict[str, str]
    bounds: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events_in / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "hot": self.hot,
            "warm": self.warm,
            "cold": self.cold,
            "dead_letter": self.dead_letter,
            "per_rule": self.per_rule,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s),
            "lake_uri": self.lake_uri,
            "hot_latency_ms": self.hot_latency_ms,
            "alerts": self.alerts,
            "outputs": self.outputs,
            "done_positions": self.done_positions,
            "bounds": self.bounds,
        }


class Pipeline:
    """A pipeline built from a config (or in Python), run on the current Ray.

    Args:
        config: the validated config.
        source: overrides the config's source (e.g. a test source).
        clock: the current time for age rules; default: the wall clock (UTC).

    Example:
        >>> from engine.config import PipelineConfig
        >>> cfg = PipelineConfig.from_dict({"source": {"events": 100}})
        >>> Pipeline(cfg).router.policy.default
        'warm'
    """

    def __init__(
        self,
        config: PipelineConfig,
        source: Source | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.router = Router(config.policy)
        self._source = source
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.tracker = PositionTracker()
        self._hints: dict[str, DecodeHints] = {}  # per source partition
        self.hot: HotPath | None = None
        self.warm: WarmPath | None = None
        self.cold: Any = None  # the ColdWriter actor handle once running

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = source_from_config(self.config)
        return self._source

    def done_positions(self) -> dict[str, int]:
        """Highest offset per source partition that every path has finished."""
        return self.tracker.done()

    def hot_state(self) -> pa.Table:
        """The hot processor's state of every key (after :meth:`run`)."""
        assert self.hot is not None, "run() first"
        return self.hot.state()

    def _start_paths(self) -> None:
        cfg = self.config
        storage = dict(cfg.cold.storage_options)
        self.hot = HotPath(cfg.hot, cfg.policy.schema)
        self.warm = WarmPath(
            cfg.warm, cfg.policy.schema, cfg.cold.lake_uri, storage, self.source.name
        )
        options: dict[str, Any] = {"num_cpus": cfg.cold.num_cpus}
        if cfg.cold.resources:
            options["resources"] = dict(cfg.cold.resources)
        self.cold = ColdWriter.options(**options).remote(
            cfg.cold.lake_uri,
            storage,
            self.source.name,
            cfg.policy.schema,
            cfg.cold.partition_by,
            cfg.cold.flush_rows,
            cfg.cold.flush_bytes,
            cfg.cold.flush_interval_s,
        )
        # Deploy before consuming: the first events must not wait for worker processes to boot.
        self.hot.wait_ready()
        self.warm.wait_ready()
        ray.get(self.cold.ready.remote())

    def run(self, progress: Callable[[Progress], None] | None = None) -> RunSummary:
        """Run until the source is exhausted and every path has finished; return a summary."""
        init_local_ray()
        self._start_paths()
        assert self.hot is not None and self.warm is not None and self.cold is not None
        started = time.monotonic()
        counts = {"events_in": 0, "hot": 0, "warm": 0, "cold": 0, "dead_letter": 0}
        cold_inflight: list[ray.ObjectRef] = []
        last_report = started
        alerts_written = 0

        def acked(seqs: list[int]) -> None:
            for seq in seqs:
                self.tracker.ack(seq)

        def collect_cold(timeout: float | None, num_returns: int = 1) -> None:
            if not cold_inflight:
                return
            ready, _ = ray.wait(
                cold_inflight, num_returns=min(num_returns, len(cold_inflight)), timeout=timeout
            )
            for ref in ready:
                cold_inflight.remove(ref)
                report: FlushReport = ray.get(ref)
                acked(report.seqs)

        first: dict[str, int] = {}  # first offset of each partition in this run
        for seq, block in enumerate(self.source.blocks()):
            ingest_ts = time.time()
            first.setdefault(block.partition, block.first_offset)
            good, dead, lines = self._decode(block)
            parts = self.router.split(good, now=self.clock())
            counts["events_in"] += lines
            counts["dead_letter"] += dead.num_rows
            for temperature, part in parts.items():
                counts[temperature] += part.num_rows
            self.tracker.open(seq, block.partition, block.last_offset, _PATHS)

            acked(self.hot.submit(parts["hot"], seq, ingest_ts))
            acked(self.warm.add(parts["warm"], seq, block.partition, block.first_offset))
            while len(cold_inflight) >= _COLD_IN_FLIGHT:
                collect_cold(timeout=None)
            cold_inflight.append(
                self.cold.write.remote(
                    seq, block.partition, block.first_offset, block.last_offset, parts["cold"], dead
                )
            )
            acked(self.hot.poll())
            acked(self.warm.tick())
            collect_cold(timeout=0, num_returns=len(cold_inflight))
            if (
                progress
                and self.config.progress_every_s
                and time.monotonic() - last_report >= self.config.progress_every_s
            ):
                last_report = time.monotonic()
                progress(self._progress(started, counts, len(cold_inflight)))

        # Drain: submit the last micro-batch, flush the lake writer, wait for everything.
        acked(self.warm.flush())
        acked(self.hot.poll(timeout=None))
        acked(self.warm.poll(timeout=None))
        collect_cold(timeout=None, num_returns=len(cold_inflight))
        final: FlushReport = ray.get(self.cold.flush.remote())
        acked(final.seqs)
        if self.hot.outputs:
            alerts = pa.Table.from_batches(self.hot.outputs)
            alerts = alerts.sort_by([(c, "ascending") for c in alerts.column_names])
            # Named by the source ranges of the run, so a rerun of them overwrites, not adds.
            ranges = sorted((p, first[p], last) for p, last in self.tracker.done().items())
            stem = "_".join(file_stem(self.source.name, p, a, b) for p, a, b in ranges)
            if len(stem) > 120:
                stem = hashlib.sha1(stem.encode()).hexdigest()
            ray.get(self.cold.write_output.remote(alerts, f"hot/alerts/alerts-{stem}.parquet"))
            alerts_written = alerts.num_rows
            self.hot.outputs.clear()
        elapsed = time.monotonic() - started
        if progress:
            progress(self._progress(started, counts, 0))
        lake = self.config.cold.lake_uri.rstrip("/")
        return RunSummary(
            events_in=counts["events_in"],
            hot=counts["hot"],
            warm=counts["warm"],
            cold=counts["cold"],
            dead_letter=counts["dead_letter"],
            per_rule=self.router.counts,
            elapsed_s=elapsed,
            lake_uri=self.config.cold.lake_uri,
            done_positions=self.tracker.done(),
            hot_latency_ms=self.hot.latency_percentiles(),
            alerts=alerts_written,
            outputs={
                "cold_events": f"{lake}/events/",
                "warm": f"{lake}/warm/{self.config.warm.output_name}/",
                "hot_alerts": f"{lake}/hot/alerts/",
                "dead_letter": f"{lake}/_dead_letter/",
            },
            bounds={
                "warm_max_tasks_in_flight_seen": self.warm.max_in_flight_seen,
                "warm_max_buffered_rows_seen": self.warm.max_buffered_rows_seen,
            },
        )

    def _decode(self, block: SourceBlock) -> tuple[pa.RecordBatch, pa.RecordBatch, int]:
        if block.data is not None:
            hints = self._hints.setdefault(block.partition, DecodeHints())
            decoded = decode_ndjson(block.data, self.config.policy.schema, hints)
            return decoded.good, decoded.dead, decoded.lines
        assert block.batch is not None
        empty = pa.RecordBatch.from_pylist([], schema=DEAD_LETTER_SCHEMA)
        return block.batch, empty, block.batch.num_rows

    def _progress(self, started: float, counts: dict[str, int], cold_inflight: int) -> Progress:
        assert self.hot is not None and self.warm is not None
        return Progress(
            elapsed_s=time.monotonic() - started,
            events_in=counts["events_in"],
            routed={t: counts[t] for t in ("hot", "warm", "cold")},
            dead_letter=counts["dead_letter"],
            done=self.tracker.done(),
            hot_calls_in_flight=self.hot.calls_in_flight,
            warm_buffered_rows=self.warm.buffered_rows,
            warm_tasks_in_flight=self.warm.tasks_in_flight,
            cold_calls_in_flight=cold_inflight,
            open_blocks=self.tracker.open_blocks,
        )
