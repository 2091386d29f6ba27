"""Blocks held in memory, replayed as a source (benchmarks and tests: the workload made once)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from engine.sources.base import Source, SourceBlock

__all__ = ["MemorySource"]


class MemorySource(Source):
    """Replay ``blocks`` in order, optionally paced at ``rate`` events per second.

    Example:
        >>> src = MemorySource([SourceBlock("0", 0, 1, data=b"{}\\n{}\\n")], name="mem")
        >>> [b.events for b in src.blocks()]
        [2]
    """

    def __init__(
        self, blocks: Sequence[SourceBlock], name: str = "memory", rate: float | None = None
    ) -> None:
        self.name = name
        self._blocks = list(blocks)
        self.rate = rate

    def blocks(self) -> Iterator[SourceBlock | None]:
        started, sent = time.monotonic(), 0
        for block in self._blocks:
            if self.rate:
                delay = started + (sent + block.events) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent += block.events
            yield block
