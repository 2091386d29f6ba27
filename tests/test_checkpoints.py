"""Checkpoint pointers: a member that lost its partitions cannot checkpoint them over the new
owner's (fencing), and two members never write the same snapshot file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from engine.checkpoint import Checkpoints
from engine.lake import Lake


def rows(player: str) -> pa.Table:
    return pa.table({"player_id": [player], "__partition": ["t-0"]})


def test_a_stalled_member_is_fenced_off_the_new_owners_partitions(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    a, b = Checkpoints(lake, "kpis"), Checkpoints(lake, "kpis")  # two members of one pipeline
    a.claim(["t-0", "t-1"])
    first = a.write_snapshot("t-0", 10, rows("from-a"))
    assert a.fenced(["t-0"]) == []
    a.save({"t-0": 10}, {"t-0": [first]})

    # A stalls; its partitions go to B, which claims them before it has checkpointed anything.
    b.claim(["t-0", "t-1"])
    assert a.fenced(["t-0", "t-1"]) == ["t-0", "t-1"] and b.fenced(["t-0", "t-1"]) == []
    # A comes back to checkpoint what it read meanwhile: fenced (its committer leaves t-0 out
    # and discards the pieces it wrote).
    late = a.write_snapshot("t-0", 15, rows("from-a-late"))
    assert a.fenced(["t-0"]) == ["t-0"]
    a.discard([late])
    assert not (tmp_path / late).exists()
    now = b.load("t-0")
    assert now is not None and now.position == 10  # B resumes from A's last good checkpoint

    newer = b.write_snapshot("t-0", 20, rows("from-b"))
    assert b.fenced(["t-0"]) == []
    b.save({"t-0": 20}, {"t-0": [newer]})
    now = a.load("t-0")
    assert now is not None and now.position == 20
    assert now.hot["player_id"].to_pylist() == ["from-b"]
    assert (tmp_path / newer).exists()  # B's piece was not removed by A

    # Given back to A later, A checkpoints it again.
    a.claim(["t-0"])
    assert a.fenced(["t-0"]) == [] and b.fenced(["t-0"]) == ["t-0"]


def test_two_members_never_write_one_snapshot_file(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    a, b = Checkpoints(lake, "kpis"), Checkpoints(lake, "kpis")
    assert a.snapshot_path("t-0", 7, 0) != b.snapshot_path("t-0", 7, 0)
    assert a.snapshot_path("t-0", 7, 0) != a.snapshot_path("t-0", 7, 1)
    assert a.snapshot_path("t-0", 7, 0).startswith("_state/kpis/t-0/hot-00000000000000000007-")
