"""Blocks held in memory, replayed as a source (benchmarks and tests: the workload made once)."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa

from engine.sources.base import Source, SourceBlock

__all__ = ["MemorySource"]


class MemorySource(Source):
    """Replay ``blocks`` in order, optionally paced at ``rate`` events per second.

    Paced, a block is handed out once its last event is due, and carries ``due_ms``: the wall
    time each event was due, so latency counts from there and a backlog (the pipeline reading
    late) shows in it instead of hiding (no coordinated omission). With ``max_rows``,
    consecutive blocks of one partition that are already due are handed out as one, up to that
    many rows: as a consumer's poll returns everything that arrived, small blocks under a light
    load and larger ones when behind.

    Example:
        >>> src = MemorySource([SourceBlock("0", 0, 1, data=b"{}\\n{}\\n")], name="mem")
        >>> [b.events for b in src.blocks()]
        [2]
    """

    def __init__(
        self,
        blocks: Sequence[SourceBlock],
        name: str = "memory",
        rate: float | None = None,
        max_rows: int | None = None,
    ) -> None:
        self.name = name
        self._blocks = list(blocks)
        self.rate = rate
        self.max_rows = max_rows

    @functools.cached_property
    def replay_id(self) -> str:
        """A digest of the blocks: the same blocks are the same content (computed once: it
        reads every byte, ~0.3 s for 2M events, and the pipeline asks at its start and end)."""
        digest = hashlib.sha1()
        for block in self._blocks:
            digest.update(f"{block.partition}|{block.first_offset}|{block.last_offset}|".encode())
            digest.update(block.data or b"")
            if block.batch is not None:
                digest.update(block.batch.serialize())
        return digest.hexdigest()[:12]

    def blocks(self) -> Iterator[SourceBlock | None]:
        if not self.rate:
            for block in self._blocks:
                if self.stopping:
                    return
                yield block
            return
        rate = self.rate
        started, wall = time.monotonic(), time.time()
        due_at = []  # events due before each block
        sent = 0
        for block in self._blocks:
            due_at.append(sent)
            sent += block.events
        i = 0
        while i < len(self._blocks) and not self.stopping:
            first = self._blocks[i]
            delay = started + (due_at[i] + first.events) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            j, rows = i + 1, first.events
            now = time.monotonic() - started
            while (
                self.max_rows
                and j < len(self._blocks)
                and self._blocks[j].partition == first.partition
                and (due_at[j] + self._blocks[j].events) / rate <= now
                and rows + self._blocks[j].events <= self.max_rows
            ):
                rows += self._blocks[j].events
                j += 1
            block = _merge(self._blocks[i:j]) if j > i + 1 else first
            due = (wall + (due_at[i] + np.arange(block.events)) / rate) * 1000
            yield replace(block, due_ms=pa.array(due))
            i = j


def _merge(blocks: Sequence[SourceBlock]) -> SourceBlock:
    """Consecutive NDJSON blocks of one partition as one block."""
    data, raw_lines, lines = [], {}, 0
    for block in blocks:
        assert block.data is not None, "only NDJSON blocks merge"
        data.append(block.data.rstrip(b"\n"))
        raw_lines.update({lines + i: raw for i, raw in block.raw_lines.items()})
        lines += block.events
    meta = {name: pa.concat_arrays([b.meta[name] for b in blocks]) for name in blocks[0].meta}
    return SourceBlock(
        blocks[0].partition,
        blocks[0].first_offset,
        blocks[-1].last_offset,
        data=b"\n".join(data),
        meta=meta,
        raw_lines=raw_lines,
    )
