"""A source read in a child process gives the same blocks, stops when asked, reports the child's
errors, and leaves no process behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.sources import BackgroundSource, Source, SourceBlock, SyntheticSource


def synthetic(events: int, **knobs: object) -> SyntheticSource:
    return SyntheticSource(events=events, block_rows=1_000, start_ms=1_764_000_000_000, **knobs)


def test_the_same_blocks_as_in_the_driver() -> None:
    here = [(b.partition, b.first_offset, b.data) for b in synthetic(5_000).blocks() if b]
    background = BackgroundSource(synthetic(5_000))
    there = [(b.partition, b.first_offset, b.data) for b in background.blocks() if b]
    background.close()
    assert there == here


def test_stop_reaches_the_child_and_close_leaves_no_process() -> None:
    source = BackgroundSource(synthetic(10_000_000), depth=2)
    seen = 0
    for _ in source.blocks():
        seen += 1
        if seen == 3:
            source.stop()
    process = source._process
    source.close()
    assert 3 <= seen < 10  # not ten million events' worth
    assert source.stopping and not process.is_alive()


class _Broken(Source):
    name = "broken"

    def blocks(self) -> Iterator[SourceBlock | None]:
        yield SourceBlock("0", 0, 0, data=b"{}")
        raise OSError("disk gone")


def test_an_error_in_the_child_is_raised_with_its_message() -> None:
    source = BackgroundSource(_Broken())
    found = []
    with pytest.raises(RuntimeError, match="the broken source failed: OSError: disk gone"):
        for block in source.blocks():
            found.append(block)
    source.close()
    assert len(found) == 1
