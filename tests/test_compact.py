"""The compaction job (jobs.compact) on a real lake: small files merged into files of the target
size while every reader sees each row once; one compactor per table (a lease in the lake, raced
for real, locally and on the S3 server); a pipeline's commits going on meanwhile."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml
from deltalake import DeltaTable

from engine.delta import LakeTables
from engine.lake import COLD, EVENTS_DIR, Lake
from engine.lease import LeaseHeld, Leases
from jobs.compact import EXIT_HELD, main

HOUR_MS = 3_600_000
T0_MS = 1_764_000_000_000 - 1_764_000_000_000 % (24 * HOUR_MS)  # midnight: hours 0, 1, 2


def batch(prefix: str, rows: int, hours: int, extra: bool) -> pa.Table:
    """Game events over ``hours`` hour folders; ``tier`` only in later batches (the stream's
    schema grew), ``amount`` on a share of rows only (a field of one event type)."""
    ids = [f"{prefix}-{k}" for k in range(rows)]
    times = pa.array([T0_MS + (k % hours) * HOUR_MS + k for k in range(rows)], pa.int64())
    table = pa.table(
        {
            "event_id": ids,
            "event_time": times.cast(pa.timestamp("ms", "UTC")),
            "amount": [float(k) if k % 3 == 0 else None for k in range(rows)],
        }
    )
    if extra:
        table = table.append_column(
            "tier", pa.array(["vip" if k % 2 else None for k in range(rows)])
        )
    return table


def append(tables: LakeTables, lake: Lake, table: pa.Table, position: int) -> None:
    staged = lake.stage_partitioned(table, "event_time", f"t.p-{position}", "p")
    assert tables.commit(EVENTS_DIR, staged, {"p": {COLD: position}}, (COLD,), ("dt", "hour")) == []


def small_files_lake(root: str, options: dict[str, Any] | None = None) -> tuple[Lake, pa.Table]:
    """Six commits of small files in each of three hour folders; what was sent."""
    lake = Lake(root, options)
    tables = LakeTables(lake, "pipe")
    tables.ensure(EVENTS_DIR, ("dt", "hour"))
    sent = []
    for i in range(6):
        table = batch(f"b{i}", 60, hours=3, extra=i >= 3)
        append(tables, lake, table, position=i)
        sent.append(table)
    return lake, pa.concat_tables(sent, promote_options="default")


def rows(lake: Lake) -> list[dict[str, Any]]:
    table = lake.read(EVENTS_DIR).select(["event_id", "event_time", "amount", "tier"])
    return table.sort_by("event_id").to_pylist()


def files_per_hour(uri: str, options: dict[str, Any] | None = None) -> dict[str, int]:
    adds = pa.table(DeltaTable(uri, storage_options=options).get_add_actions(flatten=True))
    hours = adds["partition.hour"].to_pylist()
    return {str(h): hours.count(h) for h in sorted(set(hours))}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """The job's exit code, its one-line JSON summary (stdout's last line) and its stderr."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, json.loads(out.out.strip().splitlines()[-1]), out.err


@pytest.mark.usefixtures("ray_local")
def test_small_files_are_merged_and_readers_see_every_row_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, sent = small_files_lake(str(tmp_path))
    uri = f"{tmp_path}/{EVENTS_DIR}"
    before = rows(lake)
    assert len(before) == sent.num_rows == 360 and files_per_hour(uri) == dict.fromkeys("012", 6)
    old = DeltaTable(uri).version()
    code, summary, _err = run(capsys, "--lake", str(tmp_path), "--table", EVENTS_DIR)
    assert code == 0
    assert summary["tables"][EVENTS_DIR] | {"vacuumed": 0} == {
        "partitions": 3, "removed": 18, "added": 3, "left": 0, "vacuumed": 0
    }  # fmt: skip
    assert files_per_hour(uri) == dict.fromkeys("012", 1)
    assert rows(lake) == before  # the same rows, once each, values as written
    # The positions a pipeline resumes from are untouched.
    assert LakeTables(lake, "pipe").version(EVENTS_DIR, "p") == 5
    # An older version still reads as it did (time travel; vacuum kept its files: retention).
    assert DeltaTable(uri, version=old).to_pyarrow_table().num_rows == 360
    # Filtered reads agree with full ones, also on a column the merged files lack (no column
    # bounds in the log: engine.delta.TABLE_PROPERTIES).
    append(LakeTables(lake, "pipe"), lake, batch("late", 9, 3, True).append_column(
        "region", pa.array(["eu"] * 9)), position=6)  # fmt: skip
    dataset = DeltaTable(uri).to_pyarrow_dataset()
    assert dataset.to_table(filter=ds.field("region").is_null()).num_rows == 360
    assert dataset.to_table(filter=ds.field("tier") == "vip").num_rows == 90 + 4


@pytest.mark.usefixtures("ray_local")
def test_a_second_compactor_refuses_or_waits_for_the_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, _ = small_files_lake(str(tmp_path))
    uri = f"{tmp_path}/{EVENTS_DIR}"
    leases = Leases(lake)
    held = leases.acquire(f"compact/{EVENTS_DIR}", ttl_s=600, owner="first compactor")
    code, summary, err = run(capsys, "--lake", str(tmp_path), "--table", EVENTS_DIR)
    assert code == EXIT_HELD and summary["held"] == [EVENTS_DIR] and summary["tables"] == {}
    assert "held by" in err and "first compactor" in err
    assert files_per_hour(uri) == dict.fromkeys("012", 6)  # nothing touched
    threading.Timer(1.0, leases.release, [held]).start()
    code, summary, _ = run(capsys, "--lake", str(tmp_path), "--table", EVENTS_DIR, "--wait", "20s")
    assert code == 0 and summary["tables"][EVENTS_DIR]["removed"] == 18
    assert files_per_hour(uri) == dict.fromkeys("012", 1)


@pytest.mark.parametrize("store", ["folder", "s3"])
def test_of_processes_racing_for_a_lease_exactly_one_wins(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "s3":
        uri, options = request.getfixturevalue("s3_lake")
    else:
        uri, options = str(tmp_path), {}
    leases = Leases(Lake(uri, options))
    barrier = threading.Barrier(6)

    def race(i: int) -> int | None:
        barrier.wait()
        try:
            return leases.acquire("compact/events", ttl_s=600, owner=f"racer-{i}").number
        except LeaseHeld:
            return None

    for round_ in range(1, 4):
        with ThreadPoolExecutor(6) as pool:
            won = [n for n in pool.map(race, range(6)) if n is not None]
        assert won == [round_], won  # one winner, the next number each round
        with pytest.raises(LeaseHeld):
            leases.acquire("compact/events", ttl_s=600)
        from engine.lease import Lease

        leases.release(Lease("compact/events", won[0], "", 0))
    # An expired lease is taken over without a release.
    leases.acquire("compact/events", ttl_s=0.2)
    time.sleep(0.3)
    assert leases.acquire("compact/events", ttl_s=600).number == 5


@pytest.mark.usefixtures("ray_local")
def test_a_pipeline_commits_while_its_table_is_compacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Appends (the pipeline's Delta log appender) race the compaction's commits: both go
    through, and every row is read once."""
    lake, sent = small_files_lake(str(tmp_path))
    tables = LakeTables(lake, "pipe")
    stop = threading.Event()
    appended: list[pa.Table] = []

    def keep_appending() -> None:
        position = 6
        while not stop.is_set() or position < 12:
            table = batch(f"live{position}", 30, hours=3, extra=True)
            append(tables, lake, table, position)
            appended.append(table)
            position += 1
            time.sleep(0.02)  # a checkpoint every 20 ms: far more often than a pipeline's

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        code, summary, _err = run(
            capsys, "--lake", str(tmp_path), "--table", EVENTS_DIR, "--parallel", "1"
        )
    finally:
        stop.set()
        writer.join()
    assert code == 0 and summary["tables"][EVENTS_DIR]["removed"] > 0
    # They did race: appends landed between the compaction's commits (one per partition).
    history = sorted(DeltaTable(f"{tmp_path}/{EVENTS_DIR}").history(), key=lambda h: h["version"])
    operations = [h["operation"] for h in history]
    first, last = operations.index("OPTIMIZE"), len(operations) - operations[::-1].index("OPTIMIZE")
    assert operations.count("OPTIMIZE") == 3 and "WRITE" in operations[first:last], operations
    expected = pa.concat_tables([sent, *appended], promote_options="default")
    got = rows(lake)
    assert sorted(r["event_id"] for r in got) == sorted(expected["event_id"].to_pylist())
    assert LakeTables(lake, "pipe").version(EVENTS_DIR, "p") == 5 + len(appended)


@pytest.mark.usefixtures("ray_local")
def test_compaction_of_a_lake_on_s3(
    s3_lake: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, options = s3_lake
    lake, _ = small_files_lake(uri, options)
    before = rows(lake)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"cold": {"lake_uri": uri, "storage_options": options}}))
    code, summary, _err = run(capsys, "--config", str(config))
    assert code == 0 and summary["tables"][EVENTS_DIR]["removed"] == 18
    assert rows(lake) == before
    tables = LakeTables(lake, "pipe")
    assert files_per_hour(tables.uri(EVENTS_DIR), tables.options) == dict.fromkeys("012", 1)


def test_a_stalled_acquirer_does_not_take_a_lease_that_moved_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reads that the lease (number 1) expired, then stalls; meanwhile B takes 2, C takes 3
    and removes the older records; A's create of 2 then succeeds, yet A must not hold it. The
    stall is simulated by handing A its stale read (a real pause cannot be timed here)."""
    leases = Leases(Lake(str(tmp_path)))
    leases.acquire("compact/events", ttl_s=0.01)  # 1, expired at once
    time.sleep(0.05)
    stale = leases._latest("compact/events")
    b = leases.acquire("compact/events", ttl_s=600, owner="B")  # 2
    leases.release(b)
    assert leases.acquire("compact/events", ttl_s=600, owner="C").number == 3  # removes 1, 2
    reads = iter([stale])
    real = leases._latest
    monkeypatch.setattr(leases, "_latest", lambda name: next(reads, None) or real(name))
    with pytest.raises(LeaseHeld) as held:
        leases.acquire("compact/events", ttl_s=600, owner="A")
    assert held.value.holder.endswith(" C")
