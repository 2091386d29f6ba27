"""Cold path: a lake writer actor encodes cold rows into open files, and stages them.

The writer keeps, per source partition, one open Parquet file per lake folder (``dt=/hour=/``,
then ``partition_by``; see :mod:`engine.lake`) of the ``events`` Delta table: rows are encoded
into it a row group at a time as they come (:class:`engine.rolling.RollingFile`), so a file's
size is known and the encoding keeps pace with the stream. A flush of a source partition
closes its files and stores each in one PUT, named after the partition's contiguous range of
blocks (first and last offsets) plus a random suffix, and the dead letters of the same range as
a file of the ``_dead_letter`` table. The files are *staged*: the flush reports them, and the
pipeline commits them with the source positions at its next checkpoint (:mod:`engine.delta`);
until then no reader sees them. Only after its flush returns are the blocks reported done, so a
position is never committed before its rows are durable.

Triggers, checked on each call (and once a second on a quiet stream):

- **size**, per source partition: one of its files reached ``target_file_size`` (encoded
  bytes; the file ends at most one row group past it), so the bulk of a partition's rows (the
  current hour's) lands in files of the target, not in one small file per checkpoint;
- **age**, per source partition: its oldest held row waited ``flush_interval``; this bounds how
  far the lake, and the source position the pipeline commits, lag behind the stream;
- **memory**, for the whole writer: ``flush_rows`` rows or ``flush_bytes`` bytes held (encoded
  Parquet plus rows waiting for their row group) flush everything (files smaller than the
  target: raise the bounds, or lower the target, when many partitions share one writer);
- and the end of a run, and a checkpoint before partitions are revoked, flush everything.

Rows far behind the stream (hours late) go to their own hour's folder, so each flush also writes
small files for them; compaction merges those later. A file also ends early when the stream's
schema grows (a new column, a wider type) while it is open: its rows keep their schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from engine.base import Handoff
from engine.config import ColdConfig
from engine.lake import (
    DEAD_LETTER_DIR,
    EVENTS_DIR,
    Lake,
    StagedFile,
    file_stem,
    numbers_as_double,
    on_stage_threads,
)
from engine.priority import lower_this_thread
from engine.rolling import RollingFile
from engine.wire import pack, unpack
from routers import EventSchema, concat_conformed

__all__ = ["ColdPath", "ColdWriter", "FlushReport", "with_origin", "with_routes"]

#: A row group is encoded once its Arrow bytes reach this share of ``target_file_size`` (or
#: ROW_GROUP_ROWS rows come first): Parquet with zstd holds game telemetry in ~1/8 of its Arrow
#: bytes, so a file of the target holds ~16 groups and ends at most ~1/16 past it.
_GROUP_SHARE = 0.5


@dataclass(frozen=True)
class FlushReport:
    """Blocks made durable by a call, and how many rows of each kind were written."""

    seqs: list[int]
    cold_rows: int
    dead_rows: int
    staged: list[StagedFile]


@dataclass
class _Block:
    seq: int
    first: int
    last: int


@dataclass
class _Open:
    """A file being written, and where it goes."""

    folder: str
    partition_values: dict[str, str]
    file: RollingFile


@dataclass
class _Partition:
    """What the writer holds of one source partition since its last flush."""

    since: float  # when its oldest held row came (monotonic)
    blocks: list[_Block] = field(default_factory=list)
    dead: list[pa.Table] = field(default_factory=list)  # the blocks' dead letters, in order
    files: dict[str, _Open] = field(default_factory=dict)  # folder -> its open file
    ended: list[_Open] = field(default_factory=list)  # files a schema change ended early
    rows: int = 0
    dead_bytes: int = 0

    def largest(self) -> int:
        return max((o.file.size for o in self.files.values()), default=0)

    def held_bytes(self) -> int:
        return self.dead_bytes + sum(o.file.held_bytes for o in [*self.files.values(), *self.ended])


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
        #: Columns stored with their own integer types; other integers are stored as double
        #: (engine.lake.numbers_as_double): the roles, declared columns, source columns.
        self.exact = (*schema.required, schema.arrival, *schema.declared, *exact)
        self._held: dict[str, _Partition] = {}

    def write(
        self,
        seq: int,
        partition: str,
        first: int,
        last: int,
        cold: pa.RecordBatch | pa.Buffer,
        dead: pa.Table | pa.Buffer,
    ) -> FlushReport:
        """Take one block's cold rows into the partition's open files and hold its dead letters
        (as batches, or packed by :func:`engine.wire.pack`); flush what a trigger says (see the
        module docs)."""
        return self.write_blocks(partition, [(seq, first, last)], cold, dead)

    def write_blocks(
        self,
        partition: str,
        blocks: list[tuple[int, int, int]],
        cold: pa.RecordBatch | pa.Buffer,
        dead: pa.Table | pa.Buffer,
    ) -> FlushReport:
        """:meth:`write` for consecutive blocks of one source partition at once: ``blocks`` are
        their (seq, first offset, last offset), ``cold`` and ``dead`` their rows together."""
        cold = unpack(cold)
        if not isinstance(dead, pa.Table):
            dead = pa.Table.from_batches([unpack(dead)])
        held = self._held.get(partition)
        if held is None:
            held = self._held[partition] = _Partition(time.monotonic())
        held.blocks += [_Block(seq, first, last) for seq, first, last in blocks]
        held.dead.append(dead)
        held.rows += cold.num_rows + dead.num_rows
        held.dead_bytes += dead.nbytes
        if cold.num_rows:
            rows = numbers_as_double(pa.Table.from_batches([cold]), self.exact)
            for folder, values, segment in self.lake.segments(
                rows, self.schema.time, self.partition_by
            ):
                self._add(held, folder, values, segment)
        return self.tick()

    def _add(self, held: _Partition, folder: str, values: dict[str, str], rows: pa.Table) -> None:
        """Add a folder's rows to its open file; a new file when there is none, or when the
        stream's schema grew past an open file that has encoded rows already (see
        engine.rolling)."""
        open_ = held.files.get(folder)
        if open_ is not None and not open_.file.fits(rows.schema):
            held.ended.append(held.files.pop(folder))
            open_ = None
        if open_ is None:
            group_bytes = max(int(self.target_file_size * _GROUP_SHARE), 1)
            open_ = held.files[folder] = _Open(folder, values, RollingFile(group_bytes))
        open_.file.add(rows)

    def tick(self) -> FlushReport:
        """Flush the partitions whose size or age trigger fires, or everything when what the
        writer holds reaches its memory bounds (the pipeline calls this while no block comes,
        so a quiet stream's rows still go out)."""
        held = self._held.values()
        if sum(h.rows for h in held) >= self.flush_rows or (
            sum(h.held_bytes() for h in held) >= self.flush_bytes
        ):
            return self.flush()
        now = time.monotonic()
        due = [
            p
            for p, held in self._held.items()
            if held.largest() >= self.target_file_size or now - held.since >= self.flush_interval_s
        ]
        return self.flush(due) if due else FlushReport([], 0, 0, [])

    def flush(self, partitions: Iterable[str] | None = None) -> FlushReport:
        """Close and store the files of ``partitions`` (default: all), and their dead letters,
        on the staging threads; return the blocks now durable."""
        seqs: list[int] = []
        jobs: list[tuple[str, str, _Open | pa.Table]] = []  # (stem, partition, what)
        cold_rows = dead_rows = 0
        for partition in list(self._held if partitions is None else partitions):
            held = self._held.pop(partition)
            stem = file_stem(self.pipeline, partition, held.blocks[0].first, held.blocks[-1].last)
            jobs += [(stem, partition, o) for o in [*held.ended, *held.files.values()]]
            dead = pa.concat_tables(
                [with_origin(d, self.source_name, partition) for d in held.dead]
            )
            if dead.num_rows:
                jobs.append((stem, partition, dead))
            dead_rows += dead.num_rows
            cold_rows += held.rows - dead.num_rows
            seqs += [b.seq for b in held.blocks]
        return FlushReport(sorted(seqs), cold_rows, dead_rows, on_stage_threads(self._store, jobs))

    def _store(self, job: tuple[str, str, _Open | pa.Table]) -> StagedFile:
        stem, partition, what = job
        if isinstance(what, pa.Table):
            return self.lake.stage_parquet(what, DEAD_LETTER_DIR, stem, partition)
        data = what.file.close()
        assert what.file.schema is not None  # set by close()
        return self.lake.stage_file(
            lambda handle: handle.write(data),
            what.file.rows,
            what.file.schema,
            EVENTS_DIR,
            stem,
            partition,
            what.folder,
            what.partition_values,
        )

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
#: The driver sends a source partition's blocks to the writer together, once they hold this many
#: rows (cold rows and dead letters) or the oldest waited :data:`_SEND_S` seconds. A call costs
#: the writer ~3 ms whatever its size (unpacking, a group-by per lake folder, its triggers):
#: with one call per block of a paced stream (~400 rows every 5 ms) the writer took 41% of a
#: core and the driver ~8 ms a block in calls and waits, slowing the hot path beside it.
_SEND_ROWS = 20_000
_SEND_S = 0.2


@dataclass
class _Pending:
    """Blocks of one source partition the driver holds for its next writer call."""

    since: float  # when the oldest came (monotonic)
    blocks: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, first, last)
    rows: list[pa.RecordBatch] = field(default_factory=list)
    dead: list[pa.Table] = field(default_factory=list)
    size: int = 0


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
        #: Blocks not sent yet, per source partition (see :data:`_SEND_ROWS`).
        self._pending: dict[str, _Pending] = {}
        self._ticked = 0.0
        #: Files the writer staged, for the pipeline to commit (engine.delta).
        self.staged: list[StagedFile] = []

    def wait_ready(self, timeout: float | None = None) -> None:
        ray.get(self.writer.ready.remote(), timeout=timeout)

    @property
    def calls_in_flight(self) -> int:
        return len(self._inflight)

    def submit(self, rows: pa.RecordBatch, handoff: Handoff) -> list[int]:
        """Hand a block's cold rows and dead letters to the lake writer (every block, even an
        empty one: its acknowledgement moves the ``cold`` position), together with the
        partition's next blocks (see :data:`_SEND_ROWS`). Waits while the calls or rows in
        flight are at their bounds."""
        dead = handoff.dead
        if dead is None:
            raise ValueError("the cold path takes every block's dead letters (handoff.dead)")
        pending = self._pending.get(handoff.partition)
        if pending is None:
            pending = self._pending[handoff.partition] = _Pending(time.monotonic())
        pending.blocks.append((handoff.seq, handoff.first_offset, handoff.last_offset))
        pending.rows.append(rows)
        pending.dead.append(dead)
        pending.size += rows.num_rows + dead.num_rows
        if pending.size >= _SEND_ROWS or time.monotonic() - pending.since >= _SEND_S:
            return self._send(handoff.partition)
        return []

    def _send(self, partition: str) -> list[int]:
        """One writer call with the partition's pending blocks; the blocks done meanwhile."""
        pending = self._pending.pop(partition)
        done: list[int] = []
        while self._inflight and (
            len(self._inflight) >= _IN_FLIGHT_CALLS
            or sum(self._inflight.values()) + pending.size > self.max_rows
        ):
            done += self._collect(timeout=None, num_returns=1)
        rows, dead = concat_conformed(pending.rows), concat_conformed(pending.dead)
        ref = self.writer.write_blocks.remote(partition, pending.blocks, pack(rows), pack(dead))
        self._inflight[ref] = pending.size
        return done

    def _send_all(self, older_than: float = 0.0) -> list[int]:
        """Send the pending blocks of every partition whose oldest waited ``older_than`` s."""
        now = time.monotonic()
        done: list[int] = []
        for partition, pending in list(self._pending.items()):
            if now - pending.since >= older_than:
                done += self._send(partition)
        return done

    def poll(self) -> list[int]:
        """Blocks the writer made durable, without waiting; pending blocks that waited
        :data:`_SEND_S` are sent; the writer's age trigger, once a second, while no call is in
        flight (a quiet stream)."""
        done = self._send_all(older_than=_SEND_S)
        done += self._collect(timeout=0, num_returns=len(self._inflight))
        now = time.monotonic()
        if not self._inflight and now - self._ticked >= _TICK_S:
            self._ticked = now
            self._inflight[self.writer.tick.remote()] = 0
        return done

    def flush_soon(self) -> list[int]:
        """Have the writer stage everything it buffers once the calls sent before are done,
        without waiting: its report is collected like a write's (:meth:`poll`, :meth:`drain`),
        so the flush runs while the other paths drain. Pending blocks are sent first; returns
        the blocks done meanwhile."""
        done = self._send_all()
        self._inflight[self.writer.flush.remote()] = 0
        return done

    def drain(self) -> list[int]:
        """Send the pending blocks and wait for every call (a flush asked for with
        :meth:`flush_soon` included); the writer keeps the buffers nothing asked it to stage
        (see engine.coordinator)."""
        done = self._send_all()
        return done + self._collect(timeout=None, num_returns=len(self._inflight))

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


def with_routes(parts: Mapping[str, pa.RecordBatch]) -> pa.RecordBatch:
    """Every routed row in one batch, with its temperature in the column ``route`` (what the
    lake holds under ``cold.archive: all``).

    Example:
        >>> b = pa.record_batch({"x": [1, 2]})
        >>> with_routes({"hot": b.slice(0, 1), "cold": b.slice(1)}).to_pydict()
        {'x': [1, 2], 'route': ['hot', 'cold']}
    """
    batches = [p.append_column("route", pa.repeat(t, p.num_rows)) for t, p in parts.items()]
    return pa.concat_batches(batches)


def with_origin(dead: pa.Table, source: str, partition: str) -> pa.Table:
    """Dead letters with where they came from: ``offset`` (their ``line`` when the source gave
    none), ``source`` and ``partition``, as the lake's ``_dead_letter`` files hold them."""
    n = dead.num_rows
    if "offset" not in dead.column_names:
        dead = dead.append_column("offset", dead["line"])
    return dead.append_column("source", pa.array([source] * n, pa.string())).append_column(
        "partition", pa.array([partition] * n, pa.string())
    )
