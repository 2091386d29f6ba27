"""Blocks held in memory, replayed as a source (benchmarks and tests: the workload made once)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from engine.sources.base import Source, SourceBlock

__all__ = ["MemorySource"]


class MemorySource(Source):
    """Replay ``blocks`` in order, optionally paced at ``rate`` events per second.

    Paced, each block carries ``due_s``: the wall time its first event was scheduled for.

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
        started, wall, sent = time.monotonic(), time.time(), 0
        for block in self._blocks:
            if self.rate:
                delay = started + (sent + block.events) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # When its first event was scheduled: latency counts from there, so a backlog
                # (the pipeline reading late) shows in it instead of hiding (coordinated omission).
                block = replace(block, due_s=wall + sent / self.rate)
            sent += block.events
            yield block
