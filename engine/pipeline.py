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
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine import preflight
from engine.base import Handoff, Sink
from engine.checkpoint import Checkpoints
from engine.cluster import init_local_ray, on_path_nodes
from engine.cold import ColdPath, with_origin, with_routes
from engine.commit import COLD, FEEDS, PATHS, Committer, TableSpec
from engine.config import PipelineConfig
from engine.coordinator import CheckpointCoordinator
from engine.hot import HotPath
from engine.lake import DEAD_LETTER_DIR, EVENTS_DIR, HOT_DIR, STATE_DIR, Lake, file_stem
from engine.preflight import PlacementError
from engine.processors import import_modules
from engine.sinks import KafkaSink
from engine.sources import BackgroundSource, FileSource, Source, SourceBlock, SyntheticSource
from engine.sources.kafka import META_TYPES as KAFKA_META_TYPES
from engine.sources.kafka import KafkaSource
from engine.summary import Progress, RunSummary
from engine.warm import WarmPath
from routers import (
    TIME_TYPE,
    ConfigError,
    DecodeHints,
    EventSchema,
    Router,
    concat_conformed,
    decode_arrow,
    decode_ndjson,
    new_contract,
    normalize_time,
    parse_duration_ms,
)

__all__ = [
    "Pipeline",
    "Progress",
    "RunSummary",
    "init_local_ray",
    "source_from_config",
]

#: Acknowledgements a block needs in the coordinator's ``tracker``: hot and warm. The lake
#: writer's are tracked apart (``cold_tracker``): it stages files when its buffers fill, not at
#: each checkpoint, so its position lags the paths' (see engine.coordinator).
_STATE_PATHS = 2
#: Each row's source offset, when a replay must skip rows the hot and warm paths already have.
_OFFSET = "__thermocline_offset"

#: Each row's due time rides along this column through the router's split (then dropped).
_DUE = "__thermocline_due_ms"
#: The columns ``cold.archive: all`` adds (lower case: Delta's names are case-insensitive).
_ARCHIVE_NAMES = frozenset({"route", "source_partition", "source_offset"})

_log = logging.getLogger("thermocline")


def source_from_config(config: PipelineConfig, start_ms: int | None = None) -> Source:
    """The source a config describes."""
    s = config.source
    if s.kind == "kafka":
        assert s.bootstrap is not None  # checked at load
        return KafkaSource(
            s.bootstrap,
            s.topics,
            s.group,
            start=s.start,
            max_records=s.max_records,
            idle_timeout_s=None
            if s.idle_timeout is None
            else parse_duration_ms(s.idle_timeout) / 1000,
            max_events=s.max_events,
            prefetch=s.prefetch,
            prefetch_bytes=s.prefetch_bytes,
            config=dict(s.consumer),
        )
    if s.kind == "file":
        assert s.path is not None  # checked at load
        return FileSource(s.path, s.format, s.block_rows)
    # Generated in a process of its own: making events must not take the driver's time.
    synthetic = SyntheticSource(
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
        numeric_id_share=s.numeric_id_share,
        missing_share=s.missing_share,
        epoch_seconds_share=s.epoch_seconds_share,
        drift=s.drift,
    )
    return BackgroundSource(synthetic)


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
        import_modules(config.processors)  # their registered names, before anything looks one up
        self.config = config
        self.router = Router(config.policy)
        self._source = source
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._hints: dict[str, DecodeHints] = {}  # per source partition
        #: One schema contract for the whole stream, every partition (routers.contract).
        self.contract = new_contract(config.policy.schema)
        #: Positions, checkpoints, recovery and the rebalance hooks (engine.coordinator).
        self.coordinator = CheckpointCoordinator(self.contract)
        self.hot: HotPath | None = None
        self.warm: WarmPath | None = None
        self.cold: ColdPath | None = None
        self._counts = {"events_in": 0, "hot": 0, "warm": 0, "cold": 0, "dead_letter": 0}
        self._archive_all = config.cold.archive == "all"
        self._first: dict[str, int] = {}  # first offset of each partition in this run
        self._seq = 0
        self.alerts_written = 0
        self._alerts_sink: Sink | None = None
        self._first_block_at: float | None = None  # monotonic time of the first block
        self._stopped = False  # the source ended because it was asked to stop

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = source_from_config(self.config)
        return self._source

    def done_positions(self) -> dict[str, int]:
        """Highest offset per source partition that every path has finished."""
        return self.coordinator.done_positions()

    def hot_state(self) -> pa.Table:
        """The hot processor's state of every key (after :meth:`run`)."""
        assert self.hot is not None, "run() first"
        return self.hot.state()

    def close(self) -> None:
        """Stop this pipeline's actors (hot actors, lake writer) and free their CPUs.

        :meth:`run` keeps them after it returns, for :meth:`hot_state`; it closes them itself
        when it fails. Idempotent.
        """
        for actor in self.hot.actors if self.hot is not None else []:
            ray.kill(actor)
        if self.hot is not None:
            self.hot.actors = []
        if self.cold is not None:
            self.cold.close()

    # -- lifecycle ----------------------------------------------------------------------------

    def _start_paths(self) -> None:
        # On a cluster with cluster.yaml's node types, each path on its own (engine.cluster).
        cfg = self.config = on_path_nodes(self.config)
        storage = dict(cfg.cold.storage_options)
        self.lake = Lake(cfg.cold.lake_uri, storage)
        self.hot = HotPath(cfg.hot, cfg.policy.schema)
        self.warm = WarmPath(
            cfg.warm, cfg.policy.schema, cfg.cold.lake_uri, storage, self.source.name, self.name
        )
        self.cold = ColdPath(
            cfg.cold,
            storage,
            self.source.name,
            self.name,
            cfg.policy.schema,
            # Source offsets stay integers (Kafka's, and the archive's: a replay orders by them).
            (*KAFKA_META_TYPES, "source_offset"),
        )
        self.checkpoints = Checkpoints(self.lake, self.name)
        # Cold events hold the lake writer's rows; dead letters both feeds' (decoding's and
        # the processors'); warm outputs and alerts the paths' (engine.lake.FEEDS).
        tables = {
            EVENTS_DIR: TableSpec(("dt", "hour"), (COLD,)),
            DEAD_LETTER_DIR: TableSpec((), FEEDS),
            self.warm.output: TableSpec((), (PATHS,)),
            f"{HOT_DIR}/{self.hot_name}": TableSpec((), (PATHS,)),
        }
        replay = None if self.source.checkpointed else self.source.replay_id
        self.committer = Committer(self.checkpoints, tables, replay)
        self.coordinator.start(
            self.committer,
            self.hot,
            self.source,
            (cfg.cold.lake_uri, storage),
            lambda flush_cold: self.drain(flush_cold=flush_cold),
            self._stage_outputs,
        )
        if cfg.alerts_topic:
            bootstrap = cfg.source.bootstrap
            if not bootstrap:
                raise ConfigError(["alerts_topic: needs a Kafka source.bootstrap to produce to"])
            self._alerts_sink = KafkaSink(bootstrap, cfg.alerts_topic, key_column="player_id")
            self._alerts_sink.start()
        # Deploy before consuming: the first events must not wait for worker processes to boot.
        # A path Ray cannot place (resources no node has) fails here, after a while, by name.
        timeout = preflight.PLACEMENT_TIMEOUT_S
        cold = self.cold
        for name, ready in (
            ("hot", self.hot.wait_ready),
            ("warm", self.warm.wait_ready),
            ("cold", lambda: cold.wait_ready(timeout)),
        ):
            try:
                ready()
            except ray.exceptions.GetTimeoutError:
                path = getattr(cfg, name)
                need = {"CPU": path.num_cpus, **dict(path.resources)}
                raise PlacementError(
                    f"{name}: not placed within {timeout:g} s; it needs {need} per"
                    f" {'actor' if name != 'warm' else 'task'} and Ray has"
                    f" {ray.available_resources()} free; lower {name}.num_cpus or"
                    f" {name}.resources, or add nodes that have them"
                ) from None

    def run(self, progress: Callable[[Progress], None] | None = None) -> RunSummary:
        """Run until the source is exhausted and every path has finished; return a summary.

        With a checkpointed source (Kafka), a checkpoint is taken every ``checkpoint_interval``,
        before partitions are revoked, and at the end.
        """
        init_local_ray()
        source = self.source
        source.on_revoke = self._on_revoke
        source.on_assign = self._on_assign
        source.start()  # connect (e.g. join the consumer group) while the paths deploy
        try:
            self._start_paths()
            assert self.hot is not None and self.warm is not None
            if isinstance(source, FileSource):
                self._skip_files_read(source)
            interval = parse_duration_ms(self.config.checkpoint_interval) / 1000
            started = last_report = last_checkpoint = time.monotonic()
            for block in source.blocks():
                if block is not None:  # None: a quiet moment, for the timers below
                    self._ingest(block)
                self._collect()
                now = time.monotonic()
                if source.checkpointed and now - last_checkpoint >= interval:
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
                every = self.config.progress_every_s
                if progress and every and now - last_report >= every:
                    last_report = now
                    progress(self._progress(started))
            # Stopped only if the stop cut the source short (not a signal during the drain).
            self._stopped = source.stopping
            if source.checkpointed:
                self.checkpoint(flush_cold=True)  # the last commit needs the source connected
            else:
                self.drain()
                self._stage_outputs()
                self._write_hot_state()
                # Rows of a source that replays alike (a file, a seeded synthetic stream) are
                # committed with their positions: a rerun adds each row once. Others append.
                done = self.done_positions()
                replays = source.replay_id is not None
                positions = {p: dict.fromkeys(FEEDS, n) for p, n in done.items()}
                self.committer.commit(positions if replays else {}, checkpointed=False)
                files = source if isinstance(source, FileSource) else None
                if files is not None:  # all its rows are in the lake now
                    for partition in files.finished:
                        if partition in done:
                            self.checkpoints.mark_read(partition, done[partition])
        except BaseException:
            if self._alerts_sink is not None:
                self._alerts_sink.abort()  # what it did not deliver is replayed from the source
            # A failed run's actors would hold their CPUs for as long as anything (a traceback)
            # refers to this pipeline.
            self.close()
            raise
        finally:
            source.close()
            # The hooks are our bound methods: a caller keeping the source must not keep this
            # pipeline (and, through it, its actors' handles) alive.
            source.on_revoke = source.on_assign = None
            if self._alerts_sink is not None:
                self._alerts_sink.close()
        elapsed = time.monotonic() - started
        if progress:
            progress(self._progress(started))
        return self._summary(elapsed, started)

    def _skip_files_read(self, source: FileSource) -> None:
        """Files an earlier run of this pipeline read whole are skipped, each with a line."""
        for file, partition in source.partitions().items():
            when = self.checkpoints.read_whole(partition)
            if when is not None:
                source.skip.add(partition)
                _log.warning(
                    "file source: %s skipped: read whole into the lake by a run of %s at %s"
                    " (the same path, size and modification time)",
                    file,
                    self.name,
                    when,
                )

    # -- the loop -----------------------------------------------------------------------------

    def _ingest(self, block: SourceBlock) -> None:
        """Decode, route and hand one block to the three paths."""
        assert self.hot is not None and self.warm is not None and self.cold is not None
        seq, self._seq = self._seq, self._seq + 1
        if self._first_block_at is None:
            self._first_block_at = time.monotonic()
        read_ms = time.time() * 1000
        self._first.setdefault(block.partition, block.first_offset)
        good, dead, lines, rows = self._decode(block)
        # Hot latency counts from when each event was due (produced, scheduled), so time queued
        # before we read it shows (no coordinated omission); else from when we read the block.
        due: float | pa.Array = read_ms
        if block.due_ms is not None:
            due_rows = pc.fill_null(pc.take(block.due_ms, rows), read_ms)
            good = good.append_column(_DUE, due_rows)  # travels with the rows through the split
        skip = self.coordinator.skip.get(block.partition)
        # Source offsets travel with the rows: to skip what hot and warm already hold (`skip`,
        # see _on_assign), and into the archive (a replay restores the stream's order by them).
        with_offsets = skip is not None or self._archive_all
        if with_offsets:
            good = good.append_column(_OFFSET, self._row_offsets(block, good, rows))
        parts = self.router.split(good, now=self.clock())
        # The lake's share: the cold rows, or (archive: all) every routed row with its route.
        # Taken before the replay filter below: the lake's own positions make it idempotent.
        to_lake = parts["cold"] if not self._archive_all else _archived(parts, block.partition)
        self._counts["events_in"] += lines
        self._counts["dead_letter"] += dead.num_rows
        for temperature, part in parts.items():  # routed (a replay's skipped rows included)
            self._counts[temperature] += part.num_rows
        if skip is not None:
            parts = {
                t: part.filter(pc.greater(part[_OFFSET], skip)) if t != "cold" else part
                for t, part in parts.items()
            }
            if block.last_offset > skip:
                del self.coordinator.skip[block.partition]
        if with_offsets:
            parts = {t: part.drop_columns([_OFFSET]) for t, part in parts.items()}
            if not self._archive_all:
                to_lake = to_lake.drop_columns([_OFFSET])
        if block.due_ms is not None:
            due = parts["hot"].column(_DUE)
            parts = {t: part.drop_columns([_DUE]) for t, part in parts.items()}
            to_lake = to_lake.drop_columns([_DUE])
        self.coordinator.tracker.open(seq, block.partition, block.last_offset, _STATE_PATHS)
        self.coordinator.cold_tracker.open(seq, block.partition, block.last_offset, 1)
        handoff = Handoff(seq, block.partition, block.first_offset, block.last_offset, due, dead)
        self._acked(self.hot.submit(parts["hot"], handoff))
        self._acked(self.warm.submit(parts["warm"], handoff))
        self._acked_cold(self.cold.submit(to_lake, handoff))

    def _acked(self, seqs: list[int]) -> None:
        for seq in seqs:
            self.coordinator.tracker.ack(seq)

    def _acked_cold(self, seqs: list[int]) -> None:
        for seq in seqs:
            self.coordinator.cold_tracker.ack(seq)

    @staticmethod
    def _row_offsets(block: SourceBlock, good: pa.RecordBatch, rows: pa.Array) -> pa.Array:
        """Each good row's source offset: Kafka's own, else the block's first plus its line."""
        if "kafka_offset" in good.schema.names:
            return good.column("kafka_offset")
        return pc.add(pc.cast(rows, pa.int64()), block.first_offset)

    def _collect(self) -> None:
        """Take whatever acknowledgements are ready, without waiting."""
        assert self.hot is not None and self.warm is not None and self.cold is not None
        self._acked(self.hot.poll())
        self._acked(self.warm.poll())
        self._acked_cold(self.cold.poll())

    def drain(self, flush_cold: bool = True) -> None:
        """Finish everything read so far: last micro-batch, every call, and (``flush_cold``) a
        lake flush; without it, the lake writer keeps the rows its buffers hold (see
        :meth:`checkpoint`). Every file staged is handed to the committer."""
        assert self.hot is not None and self.warm is not None and self.cold is not None
        if flush_cold:  # the lake writer stages its buffers while the paths below drain
            self._acked_cold(self.cold.flush_soon())
        self._acked(self.warm.drain())
        self._acked(self.hot.drain())
        self._acked_cold(self.cold.drain())
        self.committer.stage(self.cold.staged + self.warm.staged)
        self.cold.staged, self.warm.staged = [], []
        if self.coordinator.tracker.open_blocks or (
            flush_cold and self.coordinator.cold_tracker.open_blocks
        ):
            raise RuntimeError(
                f"{self.coordinator.tracker.open_blocks} blocks still open after a drain"
            )

    def checkpoint(self, flush_cold: bool = False) -> dict[str, int]:
        """Take a checkpoint (see :meth:`engine.coordinator.CheckpointCoordinator.checkpoint`);
        returns the positions committed to the source."""
        return self.coordinator.checkpoint(flush_cold)

    @property
    def name(self) -> str:
        """The pipeline's name (config ``name``, else the source's kind): it scopes checkpoints
        and lake file names."""
        return self.config.name or self.source.name

    @property
    def hot_name(self) -> str:
        """The hot processor's lake name (``HotConfig.lake_name``)."""
        return self.config.hot.lake_name

    def _ranges_stem(self) -> str:
        """The source ranges covered so far, as a file name: a rerun of them overwrites."""
        ranges = sorted(
            (p, self._first[p], last) for p, last in self.coordinator.tracker.done().items()
        )
        stem = "_".join(file_stem(self.name, p, a, b) for p, a, b in ranges)
        return hashlib.sha1(stem.encode()).hexdigest() if len(stem) > 120 else stem

    def _stage_outputs(self) -> None:
        """Stage the hot path's outputs: its processor's rows (e.g. alerts) in ``hot/<name>/``
        (and to the alerts topic, delivery confirmed), the rows it raised on in
        ``_dead_letter``; per source partition, committed with the paths' position."""
        assert self.hot is not None and self.cold is not None
        if self.hot.dead:
            dead: dict[str, list[pa.Table]] = {}
            for partition, rows in self.hot.dead:
                dead.setdefault(partition, []).append(rows)
            self.hot.dead.clear()
            refs = [
                self.cold.stage_output(
                    with_origin(concat_conformed(tables), self.source.name, partition),
                    DEAD_LETTER_DIR,
                    f"{file_stem(self.name, partition, self._first.get(partition, 0), 0)}-hot",
                    partition,
                )
                for partition, tables in sorted(dead.items())
            ]
            self.committer.stage(ray.get(refs))
        if not self.hot.outputs:
            return
        by_partition: dict[str, list[pa.RecordBatch]] = {}
        for partition, rows in self.hot.outputs:
            by_partition.setdefault(partition, []).append(rows)
        self.hot.outputs.clear()
        table = f"{HOT_DIR}/{self.hot_name}"
        staged, parts = [], []
        for partition, batches in sorted(by_partition.items()):
            rows = concat_conformed(batches)
            rows = rows.sort_by([(c, "ascending") for c in rows.column_names])
            stem = file_stem(self.name, partition, self._first.get(partition, 0), 0)
            staged.append(self.cold.stage_output(rows, table, stem, partition))
            parts.append(rows)
        self.committer.stage(ray.get(staged))
        alerts = concat_conformed(parts)
        if self._alerts_sink is not None:
            self._alerts_sink.write(alerts)
            self._alerts_sink.commit()  # before the checkpoint that covers these rows
        self.alerts_written += alerts.num_rows

    def _write_hot_state(self) -> None:
        """At the end of a bounded run, the hot state (one row per key) to ``state/<name>/``, to
        query like any table (a checkpointed source keeps it in its checkpoints instead)."""
        assert self.hot is not None and self.cold is not None
        state = self.hot.state()
        if state.num_rows:
            table, stem = f"{STATE_DIR}/{self.hot_name}", f"state-{self._ranges_stem()}"
            self.committer.stage([ray.get(self.cold.stage_output(state, table, stem, ""))])

    # -- rebalance hooks (called by the source from inside blocks(), in this thread) ---------

    def _on_revoke(self, partitions: list[str]) -> None:
        self.coordinator.on_revoke(partitions)

    def _on_assign(self, partitions: dict[str, int]) -> dict[str, int]:
        resume = self.coordinator.on_assign(partitions)
        for name, offset in resume.items():
            self._first.setdefault(name, offset)  # file stems of this run start there
        return resume

    # -- helpers ------------------------------------------------------------------------------

    def _decode(self, block: SourceBlock) -> tuple[pa.RecordBatch, pa.Table, int, pa.Array]:
        """Good rows (with the source's columns), dead letters (with their offsets), the number
        of lines, and each good row's line in the block."""
        schema = self.config.policy.schema
        # The source's own columns (kafka_offset...) go beside the events' in the lake: an
        # event's field named like one but for case would sit beside it (Delta refuses).
        self.contract.reserve(block.meta)
        if block.data is not None:
            hints = self._hints.setdefault(block.partition, DecodeHints())
            decoded = decode_ndjson(block.data, schema, hints, self.contract, block.raw_lines)
        else:
            assert block.batch is not None
            decoded = decode_arrow(block.batch, schema, self.contract)
        good, lines, good_lines = decoded.good, decoded.lines, decoded.good_lines
        dead = pa.Table.from_batches([decoded.dead])
        # Where each dead letter came from; the source's own offsets when it gives them.
        line = dead["line"]
        offsets = (
            pc.take(block.meta["kafka_offset"], line)
            if "kafka_offset" in block.meta
            else pc.add(line, block.first_offset)
        )
        dead = dead.append_column("offset", offsets)
        rows = pa.array(good_lines)
        for name, values in block.meta.items():  # per-record source columns on the good rows
            good = _put_column(good, name, pc.take(values, rows))
        arrival = schema.arrival
        if arrival not in block.meta:
            # The source does not know: the event's own arrival column (a file that recorded
            # when it was received), else the time we read the block.
            own = good.column(arrival) if arrival in good.schema.names else None
            read_at = pa.scalar(self.clock(), TIME_TYPE)  # the pipeline's clock: the wall clock
            times = own_arrival(own, good.num_rows, schema)
            good = _put_column(good, arrival, pc.fill_null(times, read_at))
        return good, dead, lines, rows

    def _outputs(self) -> dict[str, str]:
        """The lake folders this run's outputs are in: only those that exist."""
        lake = self.config.cold.lake_uri.rstrip("/")
        folders = {
            "cold_events": EVENTS_DIR,
            "warm": f"warm/{self.config.warm.output_name}",
            "hot_outputs": f"{HOT_DIR}/{self.hot_name}",
            "hot_state": f"{STATE_DIR}/{self.hot_name}",
            "dead_letter": DEAD_LETTER_DIR,
        }
        return {
            name: f"{lake}/{folder}/"
            for name, folder in folders.items()
            if self.lake.fs.exists(self.lake.path(folder))
        }

    def _progress(self, started: float) -> Progress:
        assert self.hot is not None and self.warm is not None
        counts = self._counts
        return Progress(
            elapsed_s=time.monotonic() - started,
            events_in=counts["events_in"],
            routed={t: counts[t] for t in ("hot", "warm", "cold")},
            dead_letter=counts["dead_letter"],
            done=self.coordinator.tracker.done(),
            hot_calls_in_flight=self.hot.calls_in_flight,
            warm_buffered_rows=self.warm.buffered_rows,
            warm_tasks_in_flight=self.warm.tasks_in_flight,
            cold_calls_in_flight=self.cold.calls_in_flight if self.cold else 0,
            open_blocks=self.coordinator.tracker.open_blocks,
        )

    def _summary(self, elapsed: float, started: float) -> RunSummary:
        assert self.hot is not None and self.warm is not None
        c = self._counts
        # Rows a processor raised on were routed, then dead-lettered: counted once, as dead.
        hot_dead, warm_dead = self.hot.dead_rows, self.warm.dead_rows
        return RunSummary(
            events_in=c["events_in"],
            hot=c["hot"] - hot_dead,
            warm=c["warm"] - warm_dead,
            cold=c["cold"],
            dead_letter=c["dead_letter"] + hot_dead + warm_dead,
            per_rule=self.router.counts,
            type_mismatches=self.router.type_mismatches,
            schema_changes=self.contract.changes,
            elapsed_s=elapsed,
            lake_uri=self.config.cold.lake_uri,
            done_positions=self.done_positions(),
            hot_latency_ms=self.hot.latency_percentiles(),
            alerts=self.alerts_written,
            outputs=self._outputs(),
            bounds={
                "warm_max_tasks_in_flight_seen": self.warm.max_in_flight_seen,
                "warm_max_buffered_rows_seen": self.warm.max_buffered_rows_seen,
            },
            checkpoints=self.coordinator.taken,
            checkpoint=self.coordinator.stats.to_json() if self.coordinator.taken else {},
            first_block_s=None if self._first_block_at is None else self._first_block_at - started,
            stopped=self._stopped,
        )


def _put_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """``batch`` with column ``name`` set to ``values`` (replaced when the event had one)."""
    if name in batch.schema.names:
        return batch.set_column(batch.schema.get_field_index(name), name, values)
    return batch.append_column(name, values)


def own_arrival(column: pa.Array | None, n: int, schema: EventSchema) -> pa.Array:
    """An event's own arrival column as ``timestamp[ms, UTC]`` (null where unusable)."""
    if column is None:
        return pa.nulls(n, TIME_TYPE)
    times, usable = normalize_time(column, schema)
    return pc.if_else(pa.array(usable), times, pa.scalar(None, TIME_TYPE))


def _archived(parts: dict[str, pa.RecordBatch], partition: str) -> pa.RecordBatch:
    """What ``cold.archive: all`` puts in the lake: every routed row with its ``route``, its
    ``source_partition`` and its ``source_offset`` (the stream's order, which jobs.replay
    restores)."""
    names = parts["cold"].schema.names
    # An event's own field of one of these names (Delta compares names case-insensitively)
    # is kept under "<name>_event", so it never collides with the archive's (a game's "route"
    # field would otherwise stop the lake writer on every restart).
    taken = {n.lower() for n in names}
    renamed = []
    for name in names:
        new = name
        while name.lower() in _ARCHIVE_NAMES and new.lower() in taken | _ARCHIVE_NAMES:
            new = f"{new}_event"
        taken.add(new.lower())
        renamed.append(new)
    if renamed != names:
        parts = {t: p.rename_columns(renamed) for t, p in parts.items()}
    rows = with_routes(parts)
    rows = rows.rename_columns(["source_offset" if n == _OFFSET else n for n in rows.schema.names])
    return rows.append_column("source_partition", pa.repeat(partition, rows.num_rows))
