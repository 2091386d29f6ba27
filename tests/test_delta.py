"""The lake's Delta tables (engine.delta): idempotent commits, fencing, schema growth, vacuum."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from engine.cli import main
from engine.delta import LakeSchemaError, LakeTables, app_id, delta_storage_options
from engine.lake import COLD, EVENTS_DIR, Lake, StagedFile

T0 = pa.scalar(1_764_000_000_000, pa.timestamp("ms", "UTC"))


def events(ids: list[str], **columns: list) -> pa.Table:
    times = pa.array([T0.as_py()] * len(ids), pa.timestamp("ms", "UTC"))
    return pa.table({"event_id": ids, "event_time": times, **columns})


def stage(lake: Lake, table: pa.Table, partition: str = "p") -> list[StagedFile]:
    return lake.stage_partitioned(table, "event_time", f"t.{partition}", partition)


def commit(tables: LakeTables, files: list[StagedFile], position: int, p: str = "p") -> list[str]:
    return tables.commit(EVENTS_DIR, files, {p: {COLD: position}}, (COLD,), ("dt", "hour"))


def test_staged_files_are_invisible_until_committed_and_commits_are_idempotent(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    tables.ensure(EVENTS_DIR, ("dt", "hour"))  # as a pipeline does when it starts
    first = stage(lake, events(["a", "b"]))
    assert lake.read(EVENTS_DIR).num_rows == 0  # staged, not committed
    assert commit(tables, first, 1) == []
    second = stage(lake, events(["c"]))
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == ["a", "b"]  # c: staged
    assert commit(tables, second, 2) == []
    # The same position again (a crash after the commit, the checkpoint finished twice): the
    # files are left out, nothing is doubled.
    again = stage(lake, events(["c"]))
    assert commit(tables, again, 2) == []
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == ["a", "b", "c"]
    assert tables.version(EVENTS_DIR, "p") == 2
    assert LakeTables(lake, "other").version(EVENTS_DIR, "p") is None  # another pipeline's


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_size_a_committed_file_is_listed_with_is_its_size(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Delta readers seek from the listed size to a Parquet footer: it must be exact. The
    writer counts the bytes it wrote (no HEAD after the PUT), on the real S3 server too."""
    if where == "s3":
        uri, storage = request.getfixturevalue("s3_lake")
        lake = Lake(uri, storage)
    else:
        lake = Lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    many = [f"e{i}" for i in range(20_000)]  # files of ~100 KB, not a few bytes
    files = stage(lake, events(many, note=["x" * (i % 97) for i in range(20_000)]))
    assert commit(tables, files, 1) == []
    options = delta_storage_options(lake.uri, lake.storage_options) or None
    adds = DeltaTable(f"{lake.uri}/{EVENTS_DIR}", storage_options=options)
    listed = pa.table(adds.get_add_actions(flatten=True))
    paths, sizes = listed["path"].to_pylist(), listed["size_bytes"].to_pylist()
    assert sizes == [lake.fs.size(lake.path(EVENTS_DIR, p)) for p in paths] and min(sizes) > 0
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == sorted(many)


def test_a_claimed_partition_fences_off_its_former_owner(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    old, new = LakeTables(lake, "pipe"), LakeTables(lake, "pipe")
    old.claim([EVENTS_DIR], ["p", "q"])
    assert commit(old, stage(lake, events(["a"])), 1) == []  # creates the table, with its epoch
    old.claim([EVENTS_DIR], ["p", "q"])
    new.claim([EVENTS_DIR], ["p"])  # p given to another member
    files = stage(lake, events(["b"]), "p") + stage(lake, events(["x"]), "q")
    fenced = old.commit(
        EVENTS_DIR, files, {"p": {COLD: 2}, "q": {COLD: 5}}, (COLD,), ("dt", "hour")
    )
    assert fenced == ["p"]  # q is still its own
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == ["a", "x"]
    assert (old.version(EVENTS_DIR, "p"), old.version(EVENTS_DIR, "q")) == (1, 5)
    assert commit(new, stage(lake, events(["b"])), 2) == []  # the new owner commits
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == ["a", "b", "x"]


def test_a_rebalance_claim_takes_only_the_partitions_assigned(tmp_path: Path) -> None:
    """A owns p and q, then a second member joins: q goes to B, p back to A. Whichever claim
    lands last, each member commits its own partition (A's claim of p once re-asserted its old
    epoch for q too, fencing B off q: B never committed it, and its Kafka position stalled)."""
    lake = Lake(str(tmp_path))
    a, b = LakeTables(lake, "pipe"), LakeTables(lake, "pipe")
    a.claim([EVENTS_DIR], ["p", "q"])
    assert commit(a, stage(lake, events(["a"])), 1) == []  # creates the table, with its epochs
    a.release(["p", "q"])  # the rebalance revokes both
    b.claim([EVENTS_DIR], ["q"])
    a.claim([EVENTS_DIR], ["p"])  # lands after B's
    assert commit(b, stage(lake, events(["x"]), "q"), 5, "q") == []
    assert commit(a, stage(lake, events(["b"]), "p"), 2, "p") == []
    assert sorted(lake.read(EVENTS_DIR)["event_id"].to_pylist()) == ["a", "b", "x"]
    assert (a.version(EVENTS_DIR, "p"), b.version(EVENTS_DIR, "q")) == (2, 5)


def test_columns_and_struct_fields_are_added_a_type_change_is_refused(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    commit(tables, stage(lake, events(["a"], amount=[5.0], item=[{"sku": "s1"}])), 1)
    later = events(["b"], amount=[4.99], item=[{"sku": "s2", "qty": 2}], region=["eu"])
    commit(tables, stage(lake, later), 2)
    back = lake.read(EVENTS_DIR).sort_by("event_id").select(["amount", "item", "region"])
    assert back.to_pylist() == [
        {"amount": 5.0, "item": {"sku": "s1", "qty": None}, "region": None},
        {"amount": 4.99, "item": {"sku": "s2", "qty": 2}, "region": "eu"},
    ]
    with pytest.raises(LakeSchemaError, match=r"column region was string .* declare"):
        commit(tables, stage(lake, events(["c"], region=[7])), 3)
    assert tables.version(EVENTS_DIR, "p") == 2  # nothing committed


def test_vacuum_removes_files_no_version_references(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    kept = stage(lake, events(["a"]))
    commit(tables, kept, 1)
    orphan = stage(lake, events(["b"]))  # a crash before the commit
    assert tables.tables() == [EVENTS_DIR]
    assert tables.vacuum(EVENTS_DIR, retention_hours=1) == []  # too young
    removed = tables.vacuum(EVENTS_DIR, retention_hours=0, dry_run=True)
    assert [p.rsplit("/", 1)[-1] for p in removed] == [orphan[0].path.rsplit("/", 1)[-1]]
    tables.vacuum(EVENTS_DIR, retention_hours=0)
    assert not (tmp_path / EVENTS_DIR / orphan[0].path).exists()
    assert (tmp_path / EVENTS_DIR / kept[0].path).exists()
    assert lake.read(EVENTS_DIR)["event_id"].to_pylist() == ["a"]
    assert len(DeltaTable(str(tmp_path / EVENTS_DIR)).file_uris()) == 1


def test_vacuum_command_refuses_a_retention_under_an_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vacuum", "--lake", str(tmp_path), "--retention", "10m"]) == 2
    assert "--retention" in capsys.readouterr().err
    lake = Lake(str(tmp_path))
    commit(LakeTables(lake, "pipe"), stage(lake, events(["a"])), 1)
    stage(lake, events(["b"]))
    assert main(["vacuum", "--lake", str(tmp_path), "--dry-run"]) == 0
    assert "0 files to remove" in capsys.readouterr().out  # younger than 168 h


def race(
    members: dict[str, LakeTables], staged: dict[str, list[list[StagedFile]]], steps: range
) -> None:
    """Each member commits its staged files of ``steps`` in order, all members at once (one
    thread each); any member's failure is raised here."""
    import threading

    errors: list[BaseException] = []

    def run(p: str) -> None:
        try:
            for i in steps:
                assert commit(members[p], staged[p][i], i, p) == []
        except BaseException as error:  # raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_members_racing_on_one_table_each_commit_once_and_delta_rs_reads_it_all(
    tmp_path: Path,
) -> None:
    """Four members commit to one table at once (each from its own stale snapshot): every
    commit lands once, app transactions and files as delta-rs reads them, and readers open the
    table from the checkpoints written along the way (every 100 versions by default)."""

    lake = Lake(str(tmp_path))
    LakeTables(lake, "pipe").ensure(EVENTS_DIR, ("dt", "hour"))
    members = {p: LakeTables(lake, "pipe") for p in ("p0", "p1", "p2", "p3")}
    staged = {p: [stage(lake, events([f"{p}-{i}"]), p) for i in range(30)] for p in members}
    for p, member in members.items():
        member.claim([EVENTS_DIR], [p])
        commit(member, staged[p][0], 0, p)  # each member's snapshot is now stale for the others
    race(members, staged, range(1, 30))
    table = DeltaTable(lake.path(EVENTS_DIR))
    assert table.version() == 1 + 4 + 4 * 30  # create, claims, commits: none lost or doubled
    ids = table.to_pyarrow_table()["event_id"].to_pylist()
    assert sorted(ids) == sorted(f"{p}-{i}" for p in members for i in range(30))
    for p in members:
        assert table.transaction_version(app_id("pipe", p)) == 29  # as delta-rs reads it
        assert members["p0"].version(EVENTS_DIR, p) == 29  # followed from another's commits
    assert (tmp_path / EVENTS_DIR / "_delta_log" / f"{100:020d}.checkpoint.parquet").exists()
    fresh = LakeTables(lake, "pipe")  # reads the checkpoint's txn column, then the commits after
    assert [fresh.version(EVENTS_DIR, p) for p in members] == [29] * 4
    leftovers = list((tmp_path / EVENTS_DIR / "_delta_log").glob("_commit_*"))
    assert leftovers == []  # the losers' temporary commit files are removed


def test_members_growing_the_schema_at_once_each_commit_once(tmp_path: Path) -> None:
    """Four members commit at once, each file with a column nobody has seen (per-type fields
    drifting in on several partitions): the schema growths race, and delta-rs refuses the
    losers' ("Metadata changed since last commit"; it stopped a two-process run in CI). Each
    loser follows the log and commits again: every row lands once, with its column."""
    lake = Lake(str(tmp_path))
    LakeTables(lake, "pipe").ensure(EVENTS_DIR, ("dt", "hour"))
    members = {p: LakeTables(lake, "pipe") for p in ("p0", "p1", "p2", "p3")}
    staged = {
        p: [stage(lake, events([f"{p}-{i}"], **{f"{p}_c{i}": [i]}), p) for i in range(8)]
        for p in members
    }
    for p, member in members.items():
        member.claim([EVENTS_DIR], [p])
    race(members, staged, range(8))
    rows = DeltaTable(lake.path(EVENTS_DIR)).to_pyarrow_table().to_pylist()
    assert sorted(r["event_id"] for r in rows) == sorted(
        f"{p}-{i}" for p in members for i in range(8)
    )
    for row in rows:  # each row's own column holds its value, every other added column null
        p, i = row["event_id"].split("-")
        extra = {k: v for k, v in row.items() if "_c" in k and v is not None}
        assert extra == {f"{p}_c{i}": int(i)}


def test_a_table_needing_a_newer_writer_protocol_is_refused_by_name(tmp_path: Path) -> None:
    from deltalake import TableFeatures

    from engine.delta_log import UnsupportedTableError

    lake = Lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    assert commit(tables, stage(lake, events(["a"])), 1) == []
    table = DeltaTable(lake.path(EVENTS_DIR))
    table.alter.add_feature(TableFeatures.ChangeDataFeed, allow_protocol_versions_increase=True)
    with pytest.raises(UnsupportedTableError, match=r"writer version 7 \(features .*changeData"):
        commit(tables, stage(lake, events(["b"])), 2)
    assert table.to_pyarrow_table()["event_id"].to_pylist() == ["a"]
