"""Cold path: a lake writer actor buffers cold rows and dead letters, and stages them as files.

A flush of a source partition writes the buffered rows of its contiguous range of blocks as data
files of the ``events`` Delta table (``dt=/hour=/``, see :mod:`engine.lake`), named after that
range's first and last offsets plus a random suffix, and the dead letters of the same range as
files of the ``_dead_letter`` table. The files are *staged*: the flush reports them, and the
pipeline commits them with the source positions at its next checkpoint (:mod:`engine.delta`);
until then no reader sees them. Only after its flush returns are the blocks reported done, so a
position is never committed before its rows are durable.

Triggers, checked on each call (and once a second on a quiet stream):

- **size**, per source partition: its buffer is flushed when the file it would make reaches
  ``target_file_size`` (aiming 10% past it, so an estimate a little low still reaches it). A
  file's size is estimated from the buffer's Arrow bytes and the ratio the writer measured on
  its own earlier flushes (the largest file of a flush against the buffer it came from: Parquet
  with zstd holds game telemetry in ~1/8 of its Arrow bytes), so the bulk of a partition's rows
  (the current hour's) lands in files of about the target, not in one small file per
  checkpoint;
- **age**, per source partition: its oldest buffered row waited ``flush_interval``; this bounds
  how far the lake, and the source position the pipeline commits, lag behind the stream;
- **memory**, for the whole writer: ``flush_rows`` rows or ``flush_bytes`` Arrow bytes buffered
  flush everything (files smaller than the target: raise the bounds, or lower the target, when
  many partitions share one writer);
- and the end of a run, and a checkpoint before partitions are revoked, flush everything.

Rows far behind the stream (hours late) go to their own hour's folder, so each flush also writes
small files for them; compaction merges those later.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from engine.base import Handoff
from engine.config import ColdConfig
from engine.lake import DEAD_LETTER_DIR, EVENTS_DIR, Lake, StagedFile, file_stem, numbers_as_double
from engine.priority import lower_this_thread
from engine.wire import pack, unpack
from routers import EventSchema, concat_conformed

__all__ = ["ColdPath", "ColdWriter", "FlushReport", "with_origin"]

#: The lake writer's first guess of a file's Parquet bytes per Arrow byte buffered: below what
#: it measures on game telemetry (~0.13), so its first size-triggered file is not oversized.
_FIRST_RATIO = 0.1
#: The size trigger aims this much past the target: the estimate is a ratio learned from earlier
#: files, and aiming at the target itself left the files of a 10-minute run at 99.8% of it.
_HEADROOM = 1.1
#: Flushes smaller than this do not teach the ratio (their fixed Parquet overhead dominates).
_MEASURE_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class FlushReport:
    """Blocks made durable by a call, and how many rows of each kind were written."""

    seqs: list[int]
    cold_rows: int
    dead_rows: int
    staged: list[StagedFile]


@dataclass
class _Pending:
    seq: int
    first: int
    last: int
    cold: pa.RecordBatch
    dead: pa.Table


class _ColdWriter:
    """The lake writer. Calls run one at a time, in order."""

    def __init__(
        self,
        lake_uri: str,
        storage_options: dict[str, Any],
        source_name: str,
        pipeline: str,
        schema: EventSchema,
        partition_by: tuple[str, ...],
        flush_rows: int,
        flush_bytes: int,
        flush_interval_s: float,
        exact: tuple[str, ...] = (),
        target_file_size: int = 32 << 20,
    ) -> None:
        # Throughput path: on a shared node, latency-bound hot actors win the CPU (an actor's
        # calls run on the thread that builds it; see engine.priority).
        lower_this_thread()
        self.lake = Lake(lake_uri, storage_options)
        self.source_name = source_name
        #: The pipeline's name: it scopes the file names (engine.lake.file_stem).
        self.pipeline = pipeline
        self.schema = schema
        self.partition_by = partition_by
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self.flush_interval_s = flush_interval_s
        self.target_file_size = target_file_size
        #: Parquet bytes of a flush's largest file per Arrow byte of its buffer (measured on
        #: each flush; the first guess is low, so the first file is not oversized).
        self.file_ratio = _FIRST_RATIO
        #: Columns stored with their own integer types; other integers are stored as double
        #: (engine.lake.numbers_as_double): the roles, declared columns, source columns.
        self.exact = (*schema.required, schema.arrival, *schema.declared, *exact)
        self._pending: dict[str, list[_Pending]] = defaultdict(list)
        self._bytes: dict[str, int] = defaultdict(int)  # Arrow bytes buffered, per partition
        self._oldest: dict[str, float] = {}  # when its oldest buffered row came, per partition
        self._rows = 0

    def write(
        self,
        seq: int,
        partition: str,
        first: int,
        last: int,
        cold: pa.RecordBatch | pa.Buffer,
        dead: pa.Table | pa.Buffer,
    ) -> FlushReport:
        """Buffer one block's cold rows and dead letters (as batches, or packed by
        :func:`engine.wire.pack`); flush what a trigger says (see the module docs)."""
        cold = unpack(cold)
        if not isinstance(dead, pa.Table):
            dead = pa.Table.from_batches([unpack(dead)])
        self._pending[partition].append(_Pending(seq, first, last, cold, dead))
        self._rows += cold.num_rows + dead.num_rows
        self._bytes[partition] += cold.nbytes + dead.nbytes
        self._oldest.setdefault(partition, time.monotonic())
        return self.tick()

    def tick(self) -> FlushReport:
        """Flush the partitions whose size or age trigger fires, or everything when the
        buffers reach their memory bounds (the pipeline calls this while no block comes, so a
        quiet stream's rows still go out)."""
        if self._rows >= self.flush_rows or sum(self._bytes.values()) >= self.flush_bytes:
            return self.flush()
        now = time.monotonic()
        due = [
            p
            for p in self._pending
            if self._bytes[p] * self.file_ratio >= self.target_file_size * _HEADROOM
            or now - self._oldest[p] >= self.flush_interval_s
        ]
        return self.flush(due) if due else FlushReport([], 0, 0, [])

    def flush(self, partitions: Iterable[str] | None = None) -> FlushReport:
        """Write the buffers of ``partitions`` (default: all); return the blocks now durable."""
        seqs: list[int] = []
        staged: list[StagedFile] = []
        cold_rows = dead_rows = 0
        for partition in list(self._pending if partitions is None else partitions):
            blocks = self._pending.pop(partition)
            buffered = self._bytes.pop(partition)
            del self._oldest[partition]
            stem = file_stem(self.pipeline, partition, blocks[0].first, blocks[-1].last)
            batches = [b.cold for b in blocks if b.cold.num_rows]
            # One stream contract, but taken at different times: cast to its latest schema.
            cold = concat_conformed(batches) if batches else pa.table({})
            if cold.num_rows:
                files = self.lake.stage_partitioned(
                    numbers_as_double(cold, self.exact),
                    self.schema.time,
                    stem,
                    partition,
                    EVENTS_DIR,
                    self.partition_by,
                )
                staged += files
                self._measure(max(f.size for f in files), buffered)
            dead = pa.concat_tables(
                [with_origin(b.dead, self.source_name, partition) for b in blocks]
            )
            if dead.num_rows:
                staged.append(self.lake.stage_parquet(dead, DEAD_LETTER_DIR, stem, partition))
            cold_rows += cold.num_rows
            dead_rows += dead.num_rows
            self._rows -= cold.num_rows + dead.num_rows
            seqs += [b.seq for b in blocks]
        return FlushReport(sorted(seqs), cold_rows, dead_rows, staged)

    def _measure(self, largest_file: int, buffered: int) -> None:
        """Learn the file-to-buffer ratio from a flush big enough to say (a small one's
        Parquet overhead would inflate it)."""
        if buffered >= _MEASURE_MIN_BYTES:
            self.file_ratio = (self.file_ratio + largest_file / buffered) / 2

    def ready(self) -> bool:
        return True

    def stage_output(
        self, table: pa.Table, directory: str, stem: str, partition: str
    ) -> StagedFile:
        """Stage a path's output rows (e.g. hot alerts) as a file of the table ``directory``."""
        return self.lake.stage_parquet(table, directory, stem, partition)


ColdWriter = ray.remote(_ColdWriter)

#: Lake-writer calls in flight at most (each one block's cold rows and dead letters), and the
#: rows in them (or ``cold.flush_rows``, if lower). Enough for the blocks that come while the
#: writer stages a target-size file (seconds): calls, not rows, used to be the only bound, and
#: with small blocks 8 calls filled within a flush (~1 s for 250K rows) and the driver stalled,
#: every hot event with it (hot p99 1.1 s at half throughput).
_IN_FLIGHT_CALLS = 256
_IN_FLIGHT_ROWS = 1_000_000
#: Seconds between the age checks a quiet stream gets (no block comes to trigger one).
_TICK_S = 1.0


class ColdPath:
    """Driver side of the cold path: the lake writer actor, its calls in flight (bounded), their
    acknowledgements and the files they staged (for the pipeline to commit).

    Args:
        config: the cold path's settings (the writer's triggers and bounds, its placement).
        storage_options: the lake's fsspec options.
        source_name: the source's kind, recorded with each dead letter.
        pipeline: the pipeline's name: it scopes the file names.
        schema: the stream's roles and declared columns.
        exact: more columns stored with their own integer types (the source's, e.g. Kafka's).
    """

    def __init__(
        self,
        config: ColdConfig,
        storage_options: dict[str, Any],
        source_name: str,
        pipeline: str,
        schema: EventSchema,
        exact: tuple[str, ...] = (),
    ) -> None:
        options: dict[str, Any] = {"num_cpus": config.num_cpus}
        if config.resources:
            options["resources"] = dict(config.resources)
        self.source_name = source_name
        self.writer: Any = ColdWriter.options(**options).remote(
            config.lake_uri,
            storage_options,
            source_name,
            pipeline,
            schema,
            config.partition_by,
            config.flush_rows,
            config.flush_bytes,
            config.flush_interval_s,
            exact,
            config.target_file_size,
        )
        self.max_rows = min(config.flush_rows, _IN_FLIGHT_ROWS)
        #: Calls in flight -> the rows each carries.
        self._inflight: dict[ray.ObjectRef, int] = {}
        self._ticked = 0.0
        #: Files the writer staged, for the pipeline to commit (engine.delta).
        self.staged: list[StagedFile] = []

    def wait_ready(self, timeout: float | None = None) -> None:
        ray.get(self.writer.ready.remote(), timeout=timeout)

    @property
    def calls_in_flight(self) -> int:
        return len(self._inflight)

    def submit(self, rows: pa.RecordBatch, handoff: Handoff) -> list[int]:
        """Send a block's cold rows and dead letters to the lake writer (every block, even an
        empty one: its acknowledgement moves the ``cold`` position). Waits while the calls or
        rows in flight are at their bounds."""
        dead = handoff.dead
        if dead is None:
            raise ValueError("the cold path takes every block's dead letters (handoff.dead)")
        size = rows.num_rows + dead.num_rows
        done: list[int] = []
        while self._inflight and (
            len(self._inflight) >= _IN_FLIGHT_CALLS
            or sum(self._inflight.values()) + size > self.max_rows
        ):
            done += self._collect(timeout=None, num_returns=1)
        ref = self.writer.write.remote(
            handoff.seq,
            handoff.partition,
            handoff.first_offset,
            handoff.last_offset,
            pack(rows),
            pack(dead),
        )
        self._inflight[ref] = size
        return done

    def poll(self) -> list[int]:
        """Blocks the writer made durable, without waiting; its age trigger, once a second,
        while no call is in flight (a quiet stream)."""
        done = self._collect(timeout=0, num_returns=len(self._inflight))
        now = time.monotonic()
        if not self._inflight and now - self._ticked >= _TICK_S:
            self._ticked = now
            self._inflight[self.writer.tick.remote()] = 0
        return done

    def flush_soon(self) -> None:
        """Have the writer stage everything it buffers once the calls sent before are done,
        without waiting: its report is collected like a write's (:meth:`poll`, :meth:`drain`),
        so the flush runs while the other paths drain."""
        self._inflight[self.writer.flush.remote()] = 0

    def drain(self) -> list[int]:
        """Wait for every call (a flush asked for with :meth:`flush_soon` included); the writer
        keeps the buffers nothing asked it to stage (see engine.coordinator)."""
        return self._collect(timeout=None, num_returns=len(self._inflight))

    def _collect(self, timeout: float | None, num_returns: int) -> list[int]:
        if not self._inflight:
            return []
        ready, _ = ray.wait(
            list(self._inflight),
            num_returns=min(max(num_returns, 1), len(self._inflight)),
            timeout=timeout,
        )
        done: list[int] = []
        for ref in ready:
            del self._inflight[ref]
            report: FlushReport = ray.get(ref)
            self.staged += report.staged
            done += report.seqs
        return done

    def stage_output(
        self, table: pa.Table, directory: str, stem: str, partition: str
    ) -> ray.ObjectRef:
        """Stage a path's output rows (e.g. hot alerts) as a file of the table ``directory``,
        by the writer (a reference to its :class:`StagedFile`)."""
        return self.writer.stage_output.remote(table, directory, stem, partition)

    def close(self) -> None:
        """Stop the lake writer actor (and free its CPU). Idempotent."""
        if self.writer is not None:
            ray.kill(self.writer)
            self.writer = None


def with_origin(dead: pa.Table, source: str, partition: str) -> pa.Table:
    """Dead letters with where they came from: ``offset`` (their ``line`` when the source gave
    none), ``source`` and ``partition``, as the lake's ``_dead_letter`` files hold them."""
    n = dead.num_rows
    if "offset" not in dead.column_names:
        dead = dead.append_column("offset", dead["line"])
    return dead.append_column("source", pa.array([source] * n, pa.string())).append_column(
        "partition", pa.array([partition] * n, pa.string())
    )
