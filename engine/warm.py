"""Warm path: rows accumulate into micro-batches; each runs as one Ray task.

Rows are buffered per source partition, so a micro-batch never mixes partitions (recovery
replays one partition at a time, and its outputs must be told apart by partition). When all
buffers together reach ``max_batch_rows`` (or ``max_batch_bytes``), the largest is cut; a buffer
whose oldest row has waited ``max_delay`` is cut too. At most ``max_in_flight`` tasks run; beyond
that the driver waits (backpressure), so the buffers never hold more than one batch in all.

A micro-batch's output file is named after its partition, the first offsets of its first and last
blocks, and the row of the first block it starts at: cuts of one large block get names of their
own, and the same size-triggered cuts of the same range get the same names again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from engine import preflight
from engine.base import Handoff
from engine.cold import with_origin
from engine.config import WarmConfig
from engine.lake import DEAD_LETTER_DIR, Lake, StagedFile, file_stem
from engine.priority import run_lowered
from engine.processors import qualified, warm_processor
from engine.quarantine import isolate
from engine.wire import pack, unpack
from routers import EventSchema, concat_conformed

__all__ = ["WarmPath", "micro_batch", "run_micro_batch"]


@ray.remote
def run_micro_batch(*args: Any) -> tuple[int, int, list[StagedFile]]:
    """The Ray task of one micro-batch: :func:`micro_batch` on a thread of its own, below the
    hot actors' priority (throughput work, see :mod:`engine.priority`)."""
    import engine.processors  # noqa: F401 - registers the built-in processors in this worker

    return run_lowered(micro_batch, *args)


def micro_batch(
    processor: str,
    schema: EventSchema,
    options: dict[str, Any],
    pieces: list[pa.Buffer],
    lake_uri: str,
    storage_options: dict[str, Any],
    output: str,
    stem: str,
    source: str = "",
    partition: str = "",
) -> tuple[int, int, list[StagedFile]]:
    """Run the warm processor over one micro-batch and stage its output in the lake.

    Rows the processor raises on are isolated (:mod:`engine.quarantine`) and staged as dead
    letters (``_dead_letter``); the rest is processed. Nothing is visible until the pipeline
    commits the staged files (engine.delta): a retried task stages new files, and only the
    ones it reports are committed.

    Args:
        output: the output table's folder in the lake (``warm/<output_name>``).
        stem: the file name prefix (the micro-batch's source range).

    Args:
        processor: the warm processor as ``module:Class``.
        pieces: the micro-batch's pieces, packed (:mod:`engine.wire`), in order.

    Returns:
        (rows processed, rows dead-lettered, the files staged).
    """
    # Pieces of blocks decoded at different times: cast to the latest schema and joined here,
    # not in the driver (joining and sending a 2 s micro-batch as one batch stalled the driver,
    # and every hot event with it, ~45 ms).
    batch = concat_conformed([unpack(piece) for piece in pieces]).combine_chunks().to_batches()[0]
    instance = warm_processor(processor)(schema, **options)
    outputs, dead = isolate(instance.process, batch, "warm")
    lake = Lake(lake_uri, storage_options)
    staged = []
    if outputs:
        staged.append(lake.stage_parquet(concat_conformed(outputs), output, stem, partition))
    if dead is None:
        return batch.num_rows, 0, staged
    dead = with_origin(dead, source, partition)
    staged.append(lake.stage_parquet(dead, DEAD_LETTER_DIR, f"{stem}-warm", partition))
    return batch.num_rows - dead.num_rows, dead.num_rows, staged


@ray.remote
def _boot() -> bool:
    import engine.processors  # noqa: F401 - the import a real micro-batch would pay for

    return True


@dataclass(frozen=True)
class _Piece:
    """Warm rows of one block, or a slice of them, packed (:mod:`engine.wire`)."""

    rows: int
    packed: pa.Buffer
    seq: int
    #: The block's first source offset.
    first_offset: int
    #: The piece's first row among the block's warm rows.
    start: int


@dataclass
class _Buffer:
    """One source partition's pieces waiting for their micro-batch."""

    pieces: list[_Piece] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    oldest: float | None = None


class WarmPath:
    """Driver side of the warm path (see the module docstring)."""

    def __init__(
        self,
        config: WarmConfig,
        schema: EventSchema,
        lake_uri: str,
        storage_options: dict[str, Any],
        source_name: str,
        pipeline: str,
    ) -> None:
        # Fail fast, in the driver, on an unknown name; workers import the class by its path.
        self.processor = qualified(warm_processor(config.processor))
        self.config = config
        self.schema = schema
        self.lake_uri = lake_uri
        self.storage_options = storage_options
        self.source_name = source_name
        self.pipeline = pipeline  # scopes the output file names (engine.lake.file_stem)
        #: Pieces of blocks, by source partition, packed as they come (see engine.wire).
        self._buffers: dict[str, _Buffer] = {}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._inflight: dict[ray.ObjectRef, list[int]] = {}
        self._tasks_left: dict[int, int] = defaultdict(int)
        self._unsent: dict[int, int] = defaultdict(int)  # rows of a block still in the buffer
        self.rows_done = 0
        self.dead_rows = 0
        #: Files finished micro-batches staged, for the pipeline to commit (engine.delta).
        self.staged: list[StagedFile] = []
        #: The output table's folder in the lake.
        self.output = f"warm/{config.output_name}"
        self.max_in_flight_seen = 0
        self.max_buffered_rows_seen = 0

    def wait_ready(self) -> None:
        """Boot the worker processes the first micro-batches will run on (one per task slot)."""
        options = {
            "num_cpus": self.config.num_cpus,
            "resources": dict(self.config.resources) or None,
        }
        boots = [_boot.options(**options).remote() for _ in range(self.config.max_in_flight)]
        ray.get(boots, timeout=preflight.PLACEMENT_TIMEOUT_S)

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    @property
    def tasks_in_flight(self) -> int:
        return len(self._inflight)

    def submit(self, batch: pa.RecordBatch, handoff: Handoff) -> list[int]:
        """Buffer the warm rows of a block; cut and submit micro-batches as they fill.

        Returns:
            Blocks that became done on this path meanwhile.
        """
        seq, partition, first_offset = handoff.seq, handoff.partition, handoff.first_offset
        if batch.num_rows == 0:
            return [seq] if self._tasks_left.get(seq, 0) == 0 else []
        done: list[int] = []
        rows = batch.num_rows
        self._unsent[seq] += rows
        start = 0
        while start < rows:
            buffer = self._buffers.setdefault(partition, _Buffer())  # anew after a cut
            room = self.config.max_batch_rows - self._buffered_rows
            piece = batch.slice(start, min(room, rows - start))
            buffer.pieces.append(_Piece(piece.num_rows, pack(piece), seq, first_offset, start))
            buffer.rows += piece.num_rows
            buffer.bytes += piece.nbytes
            buffer.oldest = buffer.oldest or time.monotonic()
            self._buffered_rows += piece.num_rows
            self._buffered_bytes += piece.nbytes
            start += piece.num_rows
            self.max_buffered_rows_seen = max(self.max_buffered_rows_seen, self._buffered_rows)
            while (
                self._buffered_rows >= self.config.max_batch_rows
                or self._buffered_bytes >= self.config.max_batch_bytes
            ):  # the largest buffer: with one partition, the only one
                done += self._cut(max(self._buffers, key=lambda p: self._buffers[p].rows))
        return done

    def poll(self) -> list[int]:
        """Apply the time trigger (``max_delay``); returns blocks done meanwhile."""
        now = time.monotonic()
        late = [
            partition
            for partition, buffer in self._buffers.items()
            if buffer.oldest is not None and now - buffer.oldest >= self.config.max_delay_s
        ]
        if not late:
            return self._finished(timeout=0)
        return [seq for partition in late for seq in self._cut(partition)]

    def drain(self) -> list[int]:
        """Submit whatever is buffered, wait for every task; the blocks done."""
        done = [seq for partition in list(self._buffers) for seq in self._cut(partition)]
        return done + self._finished(timeout=None)

    def _cut(self, partition: str) -> list[int]:
        """Submit ``partition``'s buffer as one micro-batch; returns blocks done meanwhile."""
        done: list[int] = []
        while len(self._inflight) >= self.config.max_in_flight:
            done += self._wait(num_returns=1, timeout=None)
        buffer = self._buffers.pop(partition)
        pieces = buffer.pieces
        self._buffered_rows -= buffer.rows
        self._buffered_bytes -= buffer.bytes
        head = pieces[0]
        stem = file_stem(self.pipeline, partition, head.first_offset, pieces[-1].first_offset)
        ref = run_micro_batch.options(
            num_cpus=self.config.num_cpus, resources=dict(self.config.resources) or None
        ).remote(
            self.processor,
            self.schema,
            dict(self.config.options),
            [piece.packed for piece in pieces],
            self.lake_uri,
            self.storage_options,
            self.output,
            f"{stem}-{head.start:08d}",
            self.source_name,
            partition,
        )
        seqs = sorted({piece.seq for piece in pieces})
        for piece in pieces:
            self._unsent[piece.seq] -= piece.rows
        for seq in seqs:
            self._tasks_left[seq] += 1
        self._inflight[ref] = seqs
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self._inflight))
        return done

    def _finished(self, timeout: float | None) -> list[int]:
        """Blocks done on this path (all their tasks finished and nothing left in the buffer),
        waiting up to ``timeout`` s for tasks in flight (None: all of them)."""
        if not self._inflight:
            return []
        return self._wait(num_returns=len(self._inflight), timeout=timeout)

    def _wait(self, num_returns: int, timeout: float | None) -> list[int]:
        ready, _ = ray.wait(list(self._inflight), num_returns=num_returns, timeout=timeout)
        done = []
        for ref, (rows, dead, staged) in zip(ready, ray.get(ready), strict=True):
            self.rows_done += rows
            self.dead_rows += dead
            self.staged += staged
            for seq in self._inflight.pop(ref):
                self._tasks_left[seq] -= 1
                if self._tasks_left[seq] == 0 and self._unsent[seq] == 0:
                    del self._tasks_left[seq], self._unsent[seq]
                    done.append(seq)
        return done
