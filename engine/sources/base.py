"""The source interface: blocks of events with their position in the source."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["ARRIVAL_COLUMN", "Source", "SourceBlock"]

#: Per-event arrival time a source may attach (``SourceBlock.meta``); stored with the event.
ARRIVAL_COLUMN = "arrival_time"


@dataclass(frozen=True)
class SourceBlock:
    """A contiguous range of one source partition.

    Exactly one of ``data`` (newline-delimited JSON, decoded by the pipeline) and ``batch``
    (already columnar, e.g. Parquet) is set. Offsets are the source's own positions (Kafka
    offsets, line or row numbers), inclusive; they name lake files, so a re-read of the same range
    yields the same names.
    """

    partition: str
    first_offset: int
    last_offset: int
    data: bytes | None = None
    batch: pa.RecordBatch | None = None
    #: Per-line (per-record) columns from the source, e.g. Kafka key, partition, offset, timestamp;
    #: the pipeline attaches them to the decoded rows. Line i of ``data`` is entry i. The column
    #: named :data:`ARRIVAL_COLUMN`, when present, is each event's arrival time
    #: (``timestamp[ms, UTC]``): age rules measure against it, so a replay routes alike.
    meta: dict[str, pa.Array] = field(default_factory=dict)
    #: Exact bytes of lines the source had to reshape to keep one event per line (line index ->
    #: the record as it arrived). Such a line is given to the decoder as invalid JSON, and its
    #: dead letter carries these bytes instead.
    raw_lines: dict[int, bytes] = field(default_factory=dict)
    #: Per line, the wall-clock time (ms since the epoch, float64) the event was due: produced
    #: (its Kafka timestamp) or scheduled (a paced source). Hot latency counts from it, event by
    #: event, so time spent queued before the pipeline read the block is included (no
    #: coordinated omission). None, or null for a line: the time the block was read.
    due_ms: pa.Array | None = None

    @property
    def due_s(self) -> float | None:
        """When the block's earliest event was due (``time.time()`` seconds), if known."""
        if self.due_ms is None:
            return None
        first = pc.min(self.due_ms).as_py()
        return None if first is None else first / 1000

    @property
    def events(self) -> int:
        return self.last_offset - self.first_offset + 1


class Source(ABC):
    """Produces :class:`SourceBlock` s; called from the driver process only.

    Contract: ``blocks()`` yields each partition's blocks in offset order with no gaps; it may
    block while waiting for data and ends when the source is exhausted (bounded sources) or when
    :meth:`close` is called.
    """

    #: Short name used in lake file names and metrics (letters, digits, '-', '_').
    name: str = "source"

    @abstractmethod
    def blocks(self) -> Iterator[SourceBlock | None]:
        """Yield blocks in order; ``None`` when nothing new arrived for a while.

        An unbounded source yields ``None`` after an empty poll, so the pipeline can run its
        timers (checkpoints, the warm path's time trigger) while the stream is quiet.
        """

    #: Called by a source (from inside ``blocks()``) before it gives up partitions, with their
    #: names; the pipeline drains and checkpoints them before the call returns.
    on_revoke: Callable[[list[str]], None] | None = None
    #: Called by a source when it is given partitions, with each one's resume offset by the
    #: source's own rules (committed, else start); returns the offsets to resume from instead.
    on_assign: Callable[[dict[str, int]], dict[str, int]] | None = None

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin connecting ahead of ``blocks()`` (the pipeline calls it before deploying its
        paths, so the two overlap). Rebalance hooks run only once ``blocks()`` is iterated. The
        default does nothing."""

    #: Set by :meth:`stop`; every source's ``blocks()`` ends at the next block once it is.
    stopping: bool = False

    def stop(self) -> None:
        """Ask ``blocks()`` to end after the current block (e.g. on SIGINT or SIGTERM); safe
        from a signal handler. Sources that wait inside ``blocks()`` also wake up for it."""
        self.stopping = True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections); called once the pipeline's last checkpoint is done."""

    def commit(self, positions: dict[str, int]) -> None:  # noqa: B027 - optional hook
        """Record that every offset up to ``positions[partition]`` (inclusive) is done.

        Called by the pipeline after a checkpoint (sinks flushed, state snapshotted). The default
        does nothing: bounded sources have nothing to commit.
        """

    @property
    def checkpointed(self) -> bool:
        """Whether the pipeline should take periodic checkpoints for this source."""
        return False

    @property
    def replay_id(self) -> str | None:
        """For a bounded source: what fixes the content of its partitions, or None.

        A run whose source has the same id re-reads the same rows at the same offsets, so the
        lake commits them by position, once (a rerun after a crash adds nothing twice); a
        source whose content changes from run to run returns None, and each run's rows are
        appended. The default: None.
        """
        return None
