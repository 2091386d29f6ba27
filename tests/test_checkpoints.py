"""Checkpoint pointers: a member that lost its partitions cannot write over the new owner's
records (each owner writes its own epoch's folder), and two members never write the same
snapshot file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from engine.checkpoint import Checkpoints
from engine.lake import Lake


def rows(player: str) -> pa.Table:
    return pa.table({"player_id": [player], "__partition": ["t-0"]})


def test_a_stalled_member_cannot_write_over_the_new_owners_records(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    a, b = Checkpoints(lake, "kpis"), Checkpoints(lake, "kpis")  # two members of one pipeline
    a.adopt("t-0", 1)
    first = a.write_snapshot("t-0", 10, rows("from-a"))
    a.save({"t-0": 10}, {"t-0": [first]})

    # A stalls; t-0 goes to B, whose claim in the tables says A (epoch 1) owned it before.
    b.adopt("t-0", 2, previous=[1])
    now = b.load("t-0")
    assert now is not None and now.position == 10  # B resumes from A's last checkpoint
    # A comes back and prepares what it read meanwhile, before its table commit is fenced off
    # (it then points nowhere): the record lands in A's own folder, B's are untouched.
    late = a.write_snapshot("t-0", 15, rows("from-a-late"))
    a.prepare("t-0", 15, [late], None, [])
    assert a.prepared("t-0") is not None and b.prepared("t-0") is None
    now = b.load("t-0")
    assert now is not None and now.position == 10

    newer = b.write_snapshot("t-0", 20, rows("from-b"))
    b.save({"t-0": 20}, {"t-0": [newer]})
    # Given to C later (the tables name B's epoch): C continues from B's records, not A's.
    c = Checkpoints(lake, "kpis")
    c.adopt("t-0", 3, previous=[2])
    now = c.load("t-0")
    assert now is not None and now.position == 20
    assert now.hot["player_id"].to_pylist() == ["from-b"]
    owner = json.loads((tmp_path / "_state/kpis/t-0/OWNER.json").read_text())
    assert owner["epoch"] == 3  # the hint for tools


def test_a_previous_owner_without_records_falls_back_to_the_one_before(tmp_path: Path) -> None:
    """An owner that crashed before its first checkpoint (no records in its folder), and a lake
    checkpointed before epochs (records in the partition's folder): both carried forward."""
    lake = Lake(str(tmp_path))
    old = Checkpoints(lake, "kpis")  # never adopted: the partition's own folder
    old.save({"t-0": 5}, {"t-0": [old.write_snapshot("t-0", 5, rows("old"))]})
    b = Checkpoints(lake, "kpis")
    b.adopt("t-0", 2, previous=[9])  # epoch 9 never wrote anything
    now = b.load("t-0")
    assert now is not None and now.position == 5


def test_two_members_never_write_one_snapshot_file(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    a, b = Checkpoints(lake, "kpis"), Checkpoints(lake, "kpis")
    assert a.snapshot_path("t-0", 7, 0) != b.snapshot_path("t-0", 7, 0)
    assert a.snapshot_path("t-0", 7, 0) != a.snapshot_path("t-0", 7, 1)
    assert a.snapshot_path("t-0", 7, 0).startswith("_state/kpis/t-0/hot-00000000000000000007-")
