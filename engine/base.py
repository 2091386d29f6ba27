"""The interface of a temperature's path, as the pipeline's driver loop sees it.

Each path (:class:`engine.hot.HotPath`, :class:`engine.warm.WarmPath`,
:class:`engine.cold.ColdPath`) takes a block's rows of its temperature with a :class:`Handoff`,
works on them on Ray (actors, tasks, the lake writer) and answers with *acknowledgements*: the
``seq`` of each block it has finished. The pipeline's position trackers count them
(:mod:`engine.positions`); a checkpoint drains every path first (:mod:`engine.coordinator`).

Every call is non-blocking except where a bound is full (calls or rows in flight: backpressure)
and :meth:`Path.drain`, which waits for everything submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

__all__ = ["Handoff", "Path", "Sink"]


@dataclass(frozen=True)
class Handoff:
    """What a path needs of one source block besides its rows.

    Attributes:
        seq: the block's number in this run (what acknowledgements name).
        partition: its source partition.
        first_offset, last_offset: its source offsets (file names, ranges).
        due_ms: when its rows were due, ms since the epoch (one for all, or one per row of the
            hot rows): the hot path's latency counts from there.
        dead: its dead letters (the lake writer stages them with its cold rows).
    """

    seq: int
    partition: str
    first_offset: int
    last_offset: int
    due_ms: float | pa.Array = 0.0
    dead: pa.Table | None = None


class Path(Protocol):
    """One temperature's path: blocks in, acknowledgements out."""

    def wait_ready(self) -> None:
        """Block until the path's Ray parts are placed and started (a deploy before reading)."""

    def submit(self, rows: pa.RecordBatch, handoff: Handoff) -> list[int]:
        """Take a block's rows of this path (possibly none); return the blocks done meanwhile
        (waiting only while a bound is full)."""

    def poll(self) -> list[int]:
        """Blocks done now, without waiting (time triggers fire here)."""

    def drain(self) -> list[int]:
        """Finish everything submitted (buffers cut, every call returned); the blocks done."""


class Sink(Protocol):
    """Where a path's output rows go besides the lake (e.g. alerts to a Kafka topic), with a
    lifecycle like Ray Data's ``Datasink``: :meth:`start` once, :meth:`write` batches,
    :meth:`commit` at each checkpoint, :meth:`abort` when the run fails.

    The pipeline commits a sink before the checkpoint that covers the rows written to it: a
    crash after the commit replays those rows (at least once), never loses them.
    """

    def start(self) -> None:
        """Connect (before the first write)."""

    def write(self, rows: pa.Table) -> None:
        """Queue ``rows`` (nothing is promised until :meth:`commit`)."""

    def commit(self) -> int:
        """Deliver everything written so far, or raise; returns the rows delivered."""

    def abort(self) -> None:
        """Drop what was not delivered and disconnect (the run failed)."""

    def close(self) -> None:
        """Disconnect after the last commit."""
