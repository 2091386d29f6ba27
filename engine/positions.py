"""Which source positions are done: every path has acknowledged every row up to them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["PositionTracker"]


@dataclass
class _Block:
    seq: int
    last_offset: int
    pending: int


class PositionTracker:
    """Tracks blocks until all their paths acknowledge them; reports done offsets per partition.

    A partition's done offset only moves over a contiguous prefix of finished blocks: a block
    finished early does not count while an earlier one is still open. A source commits from
    :meth:`done` (commit order: flush sinks, snapshot state, then commit these offsets).

    Example:
        >>> t = PositionTracker()
        >>> t.open(0, "p", last_offset=9, paths=2); t.open(1, "p", last_offset=19, paths=2)
        >>> t.ack(1); t.ack(1); t.done()
        {}
        >>> t.ack(0); t.ack(0); t.done()
        {'p': 19}
    """

    def __init__(self) -> None:
        self._open: dict[str, deque[_Block]] = {}
        self._by_seq: dict[int, tuple[str, _Block]] = {}
        self._done: dict[str, int] = {}

    def open(self, seq: int, partition: str, last_offset: int, paths: int) -> None:
        """Start tracking block ``seq`` that needs ``paths`` acknowledgements."""
        block = _Block(seq, last_offset, paths)
        self._open.setdefault(partition, deque()).append(block)
        self._by_seq[seq] = (partition, block)
        self._advance(partition)

    def ack(self, seq: int) -> None:
        """One path finished block ``seq``."""
        partition, block = self._by_seq[seq]
        block.pending -= 1
        if block.pending < 0:
            raise RuntimeError(f"block {seq} acknowledged more often than it has paths")
        self._advance(partition)

    def _advance(self, partition: str) -> None:
        queue = self._open[partition]
        while queue and queue[0].pending == 0:
            block = queue.popleft()
            del self._by_seq[block.seq]
            # Never backwards: blocks a replay re-reads below a resumed position are done too.
            self._done[partition] = max(block.last_offset, self._done.get(partition, -1))

    def resume(self, partition: str, position: int) -> None:
        """Everything before ``position`` is done already (restored from a checkpoint or a commit).

        So the next checkpoint records and commits it even if no block of ``partition`` follows.
        """
        if self._open.get(partition):
            raise RuntimeError(f"partition {partition} resumes with blocks still open")
        if position > 0:
            self._done[partition] = position - 1

    def forget(self, partition: str) -> None:
        """Stop tracking ``partition`` (revoked: given to another member with everything done).

        Raises:
            RuntimeError: blocks of it are still open.
        """
        if self._open.get(partition):
            raise RuntimeError(f"partition {partition} forgotten with blocks still open")
        self._open.pop(partition, None)
        self._done.pop(partition, None)

    def done(self) -> dict[str, int]:
        """Highest done offset per partition (partitions with none done are absent)."""
        return dict(self._done)

    @property
    def open_blocks(self) -> int:
        return len(self._by_seq)
