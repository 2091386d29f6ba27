"""Cold path: a lake writer actor buffers cold rows and dead letters, and flushes them as files.

A flush writes, per source partition, the buffered rows of a contiguous range of blocks to
``events/dt=/hour=/`` (see :mod:`engine.lake`), named after that range's first and last offsets,
plus the dead letters of the same range to ``_dead_letter/``. A flush fires at ``flush_rows``,
``flush_bytes`` or ``flush_interval`` (checked on each call) and at the end. Only after its flush
returns are the blocks reported done, so a position is never committed before its rows are durable.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from engine.lake import DEAD_LETTER_DIR, EVENTS_DIR, Lake, file_stem
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
    files: list[str]


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
        self._pending: dict[str, list[_Pending]] = defaultdict(list)
        #: Dead letters made after decode (a processor raised on them), per source partition.
        self._late_dead: dict[str, list[pa.Table]] = defaultdict(list)
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
        if (
            self._rows >= self.flush_rows
            or self._bytes >= self.flush_bytes
            or time.monotonic() - self._oldest >= self.flush_interval_s
        ):
            return self.flush()
        return FlushReport([], 0, 0, [])

    def add_dead(self, partition: str, dead: pa.Table) -> None:
        """Buffer dead letters a path's processor made (``raw``, ``reason``, ``line``); they are
        written by the next flush, so a checkpoint (which flushes) makes them durable."""
        self._late_dead[partition].append(with_origin(dead, self.source_name, partition))

    def flush(self) -> FlushReport:
        """Write everything buffered; return the blocks that are now durable."""
        seqs: list[int] = []
        files: list[str] = []
        cold_rows = dead_rows = 0
        for partition, blocks in self._pending.items():
            stem = file_stem(self.pipeline, partition, blocks[0].first, blocks[-1].last)
            batches = [b.cold for b in blocks if b.cold.num_rows]
            # One stream contract, but taken at different times: cast to its latest schema.
            cold = concat_conformed(batches) if batches else pa.table({})
            if cold.num_rows:
                files += self.lake.write_partitioned(
                    cold, self.schema.time, stem, EVENTS_DIR, self.partition_by
                )
            dead = pa.concat_tables(
                [with_origin(b.dead, self.source_name, partition) for b in blocks]
            )
            if dead.num_rows:
                files.append(self.lake.write_parquet(dead, f"{DEAD_LETTER_DIR}/{stem}.parquet"))
            cold_rows += cold.num_rows
            dead_rows += dead.num_rows
            seqs += [b.seq for b in blocks]
        for partition, tables in self._late_dead.items():
            late = concat_conformed(tables)
            # Named by content: a rerun that meets the same poison rows rewrites the same file.
            digest = hashlib.sha1(b"".join(late["raw"].to_pylist())).hexdigest()[:16]
            name = f"{DEAD_LETTER_DIR}/{file_stem(self.pipeline, partition, 0, 0)}-proc-{digest}"
            files.append(self.lake.write_parquet(late, f"{name}.parquet"))
            dead_rows += late.num_rows
        self._late_dead.clear()
        self._pending.clear()
        self._rows = self._bytes = 0
        self._oldest = None
        return FlushReport(sorted(seqs), cold_rows, dead_rows, files)

    def ready(self) -> bool:
        return True

    def write_output(self, table: pa.Table, relative_path: str) -> str:
        """Write a path's output table (e.g. hot alerts) to the lake."""
        return self.lake.write_parquet(table, relative_path)


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
