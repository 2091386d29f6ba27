"""A source read in a child process gives the same blocks, stops when asked, reports the child's
errors, and leaves no process behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.sources import BackgroundSource, Source, SourceBlock, SyntheticSource


def synthetic(events: int, **knobs: Any) -> SyntheticSource:
    return SyntheticSource(
        events=events, **{"block_rows": 1_000, "start_ms": 1_764_000_000_000, **knobs}
    )


def shm_names() -> set[str]:
    """Python's shared-memory segments (``psm_*``; a live queue's semaphores are not ours)."""
    folder = Path("/dev/shm")
    return {p.name for p in folder.glob("psm_*")} if folder.is_dir() else set()


@pytest.mark.parametrize("slot_bytes", [16 << 20, 150_000], ids=["shared-memory", "some-too-big"])
def test_the_same_blocks_as_in_the_driver(slot_bytes: int) -> None:
    """Blocks (bytes, arrival times, offsets) arrive as made, through the shared-memory ring or,
    for a block larger than a slot (~200 KB here against 150 KB), through the queue; the ring is
    removed once the source is done."""
    before = shm_names()
    here = [
        (b.partition, b.first_offset, b.data, b.meta["arrival_time"])
        for b in synthetic(5_000, block_rows=700).blocks()
        if b
    ]
    background = BackgroundSource(synthetic(5_000, block_rows=700), slot_bytes=slot_bytes)
    there = [
        (b.partition, b.first_offset, b.data, b.meta["arrival_time"])
        for b in background.blocks()
        if b
    ]
    too_big = {len(b[2]) > slot_bytes for b in here}
    assert too_big == ({False} if slot_bytes > 1e6 else {False, True})
    assert len(background._slots) == 0 and shm_names() <= before  # released at the end
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


def test_stop_ends_a_paced_source_without_waiting_for_its_next_block() -> None:
    import time

    source = BackgroundSource(synthetic(1_000_000, rate=100.0))  # a block every 10 s
    blocks = source.blocks()
    next(blocks)
    source.stop()
    started = time.monotonic()
    assert list(blocks) == []
    source.close()
    assert time.monotonic() - started < 5


def test_file_partition_names_depend_only_on_each_files_own_path_and_version(tmp_path) -> None:
    import os

    from engine.sources import FileSource

    (tmp_path / "a_b.ndjson").write_text("{}\n")
    alone = FileSource(tmp_path).partitions()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.ndjson").write_text("{}\n")
    both = FileSource(tmp_path).partitions()
    assert both[tmp_path / "a_b.ndjson"] == alone[tmp_path / "a_b.ndjson"]
    assert both[tmp_path / "a_b.ndjson"].startswith("a_b.ndjson@")
    assert both[tmp_path / "a" / "b.ndjson"].startswith("a/b.ndjson@")
    # A new file under an old name (same length, written later) is another partition.
    os.utime(tmp_path / "a_b.ndjson", ns=(1, 1))
    assert (
        FileSource(tmp_path).partitions()[tmp_path / "a_b.ndjson"] != alone[tmp_path / "a_b.ndjson"]
    )


def test_the_child_ends_with_a_killed_driver() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    from tests.test_cli_fail_fast import survivors

    mark = uuid.uuid4().hex
    code = (
        "from engine.sources import BackgroundSource, SyntheticSource\n"
        # A block every 2 s for 27 hours: the child outlives the test unless it sees its driver die.
        "s = BackgroundSource(SyntheticSource(events=10**7, block_rows=200, rate=100.0))\n"
        "b = s.blocks(); next(b); print('READY', flush=True)\nimport time; time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TC_TEST_MARK": mark},
    )  # fmt: skip
    assert driver.stdout is not None and driver.stdout.readline().strip() == "READY"
    assert len(survivors(mark)) >= 2  # the driver and its source process
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while survivors(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert survivors(mark) == []
