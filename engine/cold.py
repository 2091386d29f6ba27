"""Cold path: a lake writer actor buffers cold rows and dead letters, and stages them as files.

A flush writes, per source partition, the buffered rows of a contiguous range of blocks as data
files of the ``events`` Delta table (``dt=/hour=/``, see :mod:`engine.lake`), named after that
range's first and last offsets plus a random suffix, and the dead letters of the same range as
files of the ``_dead_letter`` table. The files are *staged*: the flush reports them, and the
pipeline commits them with the source positions at its next checkpoint (:mod:`engine.delta`);
until then no reader sees them. A flush fires at ``flush_rows``, ``flush_bytes`` or
``flush_interval`` (checked on each call) and at the end. Only after its flush returns are the
blocks reported done, so a position is never committed before its rows are durable.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from engine.lake import DEAD_LETTER_DIR, EVENTS_DIR, Lake, StagedFile, file_stem, numbers_as_double
from engine.priority import lower_this_thread
from engine.wire import unpack
from routers import EventSchema, concat_conformed

__all__ = ["ColdWriter", "FlushReport", "with_origin"]


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
        #: Columns stored with their own integer types; other integers are stored as double
        #: (engine.lake.numbers_as_double): the roles, declared columns, source columns.
        self.exact = (*schema.required, schema.arrival, *schema.declared, *exact)
        self._pending: dict[str, list[_Pending]] = defaultdict(list)
        self._rows = 0
        self._bytes = 0
        self._oldest: float | None = None

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
        :func:`engine.wire.pack`); flush if a trigger fires."""
        cold = unpack(cold)
        if not isinstance(dead, pa.Table):
            dead = pa.Table.from_batches([unpack(dead)])
        self._pending[partition].append(_Pending(seq, first, last, cold, dead))
        self._rows += cold.num_rows + dead.num_rows
        self._bytes += cold.nbytes + dead.nbytes
        self._oldest = self._oldest or time.monotonic()
        return self.tick()

    def tick(self) -> FlushReport:
        """Flush if a trigger fires: rows, bytes, or the oldest buffered row's age (the
        pipeline calls this while no block comes, so a quiet stream's rows still go out)."""
        if self._oldest is not None and (
            self._rows >= self.flush_rows
            or self._bytes >= self.flush_bytes
            or time.monotonic() - self._oldest >= self.flush_interval_s
        ):
            return self.flush()
        return FlushReport([], 0, 0, [])

    def flush(self) -> FlushReport:
        """Write everything buffered; return the blocks that are now durable."""
        seqs: list[int] = []
        staged: list[StagedFile] = []
        cold_rows = dead_rows = 0
        for partition, blocks in self._pending.items():
            stem = file_stem(self.pipeline, partition, blocks[0].first, blocks[-1].last)
            batches = [b.cold for b in blocks if b.cold.num_rows]
            # One stream contract, but taken at different times: cast to its latest schema.
            cold = concat_conformed(batches) if batches else pa.table({})
            if cold.num_rows:
                staged += self.lake.stage_partitioned(
                    numbers_as_double(cold, self.exact),
                    self.schema.time,
                    stem,
                    partition,
                    EVENTS_DIR,
                    self.partition_by,
                )
            dead = pa.concat_tables(
                [with_origin(b.dead, self.source_name, partition) for b in blocks]
            )
            if dead.num_rows:
                staged.append(self.lake.stage_parquet(dead, DEAD_LETTER_DIR, stem, partition))
            cold_rows += cold.num_rows
            dead_rows += dead.num_rows
            seqs += [b.seq for b in blocks]
        self._pending.clear()
        self._rows = self._bytes = 0
        self._oldest = None
        return FlushReport(sorted(seqs), cold_rows, dead_rows, staged)

    def ready(self) -> bool:
        return True

    def stage_output(
        self, table: pa.Table, directory: str, stem: str, partition: str
    ) -> StagedFile:
        """Stage a path's output rows (e.g. hot alerts) as a file of the table ``directory``."""
        return self.lake.stage_parquet(table, directory, stem, partition)


ColdWriter = ray.remote(_ColdWriter)


def with_origin(dead: pa.Table, source: str, partition: str) -> pa.Table:
    """Dead letters with where they came from: ``offset`` (their ``line`` when the source gave
    none), ``source`` and ``partition``, as the lake's ``_dead_letter`` files hold them."""
    n = dead.num_rows
    if "offset" not in dead.column_names:
        dead = dead.append_column("offset", dead["line"])
    return dead.append_column("source", pa.array([source] * n, pa.string())).append_column(
        "partition", pa.array([partition] * n, pa.string())
    )
