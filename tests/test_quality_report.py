"""The quality report job (jobs.quality_report) on real lakes: rows, null rates, late shares
and schema changes worked out by hand on hand-made commits; dead letters by reason from a real
pipeline run over malformed lines; thresholds to exit codes; one lake on the S3 server; bad
arguments named with their fix."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from engine.config import PipelineConfig
from engine.delta import LakeTables
from engine.lake import COLD, EVENTS_DIR, Lake
from engine.pipeline import Pipeline
from engine.sources import MemorySource
from engine.sources.base import SourceBlock
from jobs.quality_report import EXIT_CROSSED, main

pytestmark = pytest.mark.usefixtures("ray_local")

# Schema changes are placed by commit time, and the hand-made lake is committed now: its events
# are today's, and runs cover tomorrow too (a fixture that commits across midnight stays in).
TODAY = datetime.now(timezone.utc).date()
DAY, NEXT = TODAY.isoformat(), (TODAY + timedelta(1)).isoformat()
T0 = datetime.combine(TODAY, datetime.min.time(), timezone.utc)
MINUTE = timedelta(minutes=1)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """The job's exit code, its one-line JSON summary (stdout's last line) and its stderr."""
    code = main(list(args))
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}, out.err


def append(lake: Lake, table: pa.Table, position: int, units: tuple[str, str]) -> None:
    """Commit ``table`` to the events table as the lake writer does (a file per hour folder),
    ``event_time`` and ``arrival_time`` stored at ``units``."""
    tables = LakeTables(lake, "pipe")
    tables.ensure(EVENTS_DIR, ("dt", "hour"))
    staged = []
    for folder, values, rows in lake.segments(table, "event_time"):
        for name, unit in zip(("event_time", "arrival_time"), units, strict=True):
            index = rows.schema.get_field_index(name)
            rows = rows.set_column(index, name, rows[name].cast(pa.timestamp(unit, "UTC")))
        staged.append(lake.stage_parquet(rows, EVENTS_DIR, f"t.p-{position}", "p", folder, values))
    assert tables.commit(EVENTS_DIR, staged, {"p": {COLD: position}}, (COLD,), ("dt", "hour")) == []


def event(n: int, minute: int, delay: float | None, **fields: Any) -> dict[str, Any]:
    """Event ``n`` at ``minute`` past midnight, arriving ``delay`` minutes later (None: no
    arrival time)."""
    at = T0 + minute * MINUTE
    return {
        "event_id": f"e{n}",
        "player_id": f"p{n}",
        "event_type": "purchase",
        "event_time": at,
        "arrival_time": None if delay is None else at + delay * MINUTE,
        **fields,
    }


def table(rows: list[dict[str, Any]], **types: pa.DataType) -> pa.Table:
    """``rows`` as a table, times as ``timestamp[ms, UTC]`` (as the pipeline writes them)."""
    fields = [
        pa.field("event_id", pa.string()),
        pa.field("player_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("event_time", pa.timestamp("ms", "UTC")),
        pa.field("arrival_time", pa.timestamp("ms", "UTC")),
        *(pa.field(name, kind) for name, kind in types.items()),
    ]
    return pa.Table.from_pylist(rows, pa.schema(fields))


META_1 = pa.struct([("k", pa.int64())])
META_2 = pa.struct([("k", pa.int64()), ("k2", pa.string())])


@pytest.fixture(scope="module")
def hand_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two commits to the events table: the first with event times in µs and arrival times in
    ms, the second the other way round and with columns the table did not have (``tier``,
    ``tags``, a struct field ``meta.k2``)."""
    root = str(tmp_path_factory.mktemp("lake"))
    lake = Lake(root)
    first = [
        event(1, 5, 1, amount=1.0, meta={"k": 1}),
        event(2, 6, 10, amount=math.nan, meta=None) | {"player_id": None},  # NaN: not null
        event(3, 7, None, amount=None, meta={"k": None}),  # a struct of nulls is not null
        event(4, 8, 5, amount=2.0, meta=None),  # exactly --late-after: not late
        event(5, 65, 6, amount=None, meta={"k": 2}),  # hour 1
        event(6, 70, 120, amount=4.0, meta={"k": 3}),  # hour 1
        event(7, -30, 0, amount=9.0, meta=None),  # the day before: not in the report
    ]
    append(lake, table(first, amount=pa.float64(), meta=META_1), 0, units=("us", "ms"))
    second = [
        event(8, 20, 0, amount=3.0, meta={"k": 5, "k2": "x"}, tier="vip", tags=["a", "b"]),
        event(9, 21, 30, amount=None, meta=None, tier=None, tags=None),
    ]
    tags = pa.list_(pa.string())
    grown = table(second, amount=pa.float64(), meta=META_2, tier=pa.string(), tags=tags)
    append(lake, grown, 1, units=("ms", "us"))
    return root


def test_rows_null_rates_late_shares_and_schema_changes_are_exact(
    hand_lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "quality.json"
    code, summary, err = run(
        capsys, "--lake", hand_lake, "--day", DAY, "--until", NEXT, "--json-out", str(out)
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert summary["rows"] == report["rows"] == 8 and summary["partitions"] == 2
    assert summary["crossings"] == report["crossings"] == []
    zero, one = report["partitions"]
    assert (zero["dt"], zero["hour"], zero["rows"], zero["files"]) == (DAY, 0, 6, 2)
    assert (one["dt"], one["hour"], one["rows"], one["files"]) == (DAY, 1, 2, 1)
    # Hour 0: events 1-4 (first commit), 8-9 (second). A column the first commit's file lacks
    # reads as null for its 4 rows; NaN and a struct of null fields are values.
    assert zero["null_rate"] == {
        "event_id": 0.0, "player_id": 1 / 6, "event_type": 0.0, "event_time": 0.0,
        "arrival_time": 1 / 6, "amount": 2 / 6, "meta": 3 / 6, "tier": 5 / 6, "tags": 5 / 6,
    }  # fmt: skip
    assert zero["absent"]["tier"] == zero["absent"]["tags"] == 4 and zero["absent"]["meta"] == 0
    assert one["null_rate"]["tier"] == one["null_rate"]["tags"] == 1.0
    assert one["null_rate"]["amount"] == 0.5 and one["null_rate"]["meta"] == 0.0
    # Late (arrival more than 5m after the event): events 2 (10m) and 9 (30m) of the 5 with
    # both times in hour 0 (4 arrived exactly 5m after: not late); 5 (6m) and 6 (2h) in hour 1.
    assert (zero["late"], zero["timed"], zero["late_share"]) == (2, 5, 0.4)
    assert (one["late"], one["timed"], one["late_share"]) == (2, 2, 1.0)
    assert report["late_share"] == summary["late_share"] == 4 / 7
    assert report["column_totals"]["tier"] == {"nulls": 7, "null_rate": 7 / 8}
    # Schema changes from the log: the table's creation (its partition columns), the first
    # commit's columns, and the second's, with their types; by version, as committed.
    changes = report["schema_changes"]
    assert [c["version"] for c in changes] == summary["schema_changes"] == [0, 1, 3]
    assert [c["column"] for c in changes[0]["added"]] == ["dt", "hour"]
    assert [c["column"] for c in changes[1]["added"]] == [
        "amount", "arrival_time", "event_id", "event_time", "event_type", "meta", "player_id"
    ]  # fmt: skip
    assert changes[2]["added"] == [
        {"column": "meta.k2", "type": "string"},
        {"column": "tags", "type": "list<element: string>"},
        {"column": "tier", "type": "string"},
    ]
    assert changes[2]["removed"] == changes[2]["changed"] == []
    assert changes[2]["committed"].startswith((DAY, NEXT))
    # The tables on stderr: a partition per line, the columns, the change, nothing crossed.
    assert f"{DAY}     0     6      2     2      40.00%" in err
    assert "version 3 at" in err and "+tier string" in err and "+meta.k2 string" in err
    assert "thresholds: all hold" in err
    assert report["dead_letters"] == {
        "scope": "table", "exists": False, "rows": 0, "by_reason": {}, "events_rows": 9,
        "share": 0.0,
    }  # fmt: skip


def test_schema_changes_outside_the_days_are_left_out(
    hand_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The day before: one event, and no commit was made then.
    yesterday = (TODAY - timedelta(1)).isoformat()
    code, summary, err = run(capsys, "--lake", hand_lake, "--day", yesterday)
    assert code == 0, err
    assert summary["rows"] == 1 and summary["partitions"] == 1
    assert summary["schema_changes"] == []


def test_crossed_thresholds_exit_4_naming_partition_measure_value_and_threshold(
    hand_lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.json"
    code, summary, err = run(
        capsys, "--lake", hand_lake, "--day", DAY, "--json-out", str(out),
        "--max-null-rate", "tier=0.9", "--max-null-rate", "player_id=0",
        "--max-late-share", "0.5", "--late-after", "5m",
    )  # fmt: skip
    assert code == EXIT_CROSSED == 4
    want = [
        {"partition": f"dt={DAY}/hour=0", "measure": "null_rate:player_id", "value": 1 / 6,
         "threshold": 0.0},
        {"partition": f"dt={DAY}/hour=1", "measure": "null_rate:tier", "value": 1.0,
         "threshold": 0.9},
        {"partition": f"dt={DAY}/hour=1", "measure": "late_share", "value": 1.0,
         "threshold": 0.5},
    ]  # fmt: skip
    assert summary["crossings"] == want
    assert json.loads(out.read_text())["crossings"] == want
    assert "THRESHOLDS CROSSED: 3" in err
    assert f"dt={DAY}/hour=1: null_rate:tier 1 > 0.9" in err
    # Thresholds just at the values measured hold (crossing is above), and so does a wider
    # --late-after: hour 1's events were 6m and 2h late.
    code, summary, err = run(
        capsys, "--lake", hand_lake, "--day", DAY,
        "--max-null-rate", "tier=1", "--max-null-rate", "player_id=0.17",
        "--max-late-share", "0.5", "--late-after", "3h",
    )  # fmt: skip
    assert code == 0, err
    assert summary["crossings"] == [] and summary["late_share"] == 0.0


def test_a_day_without_events_reports_nothing_and_holds(
    hand_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary, err = run(
        capsys, "--lake", hand_lake, "--day", "2020-02-29", "--max-late-share", "0"
    )
    assert code == 0, err
    assert (summary["partitions"], summary["rows"], summary["late_share"]) == (0, 0, None)
    assert "no events in these days" in err


NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


def test_dead_letters_of_a_real_pipeline_run_by_reason_and_their_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        {"event_id": "1", "player_id": "a", "event_type": "x", "amount": 1.5,
         "event_time": "2026-11-20T10:00:00Z", "arrival_time": "2026-11-20T10:01:00Z"},
        {"event_id": "2", "player_id": "b", "event_type": "x", "amount": 2,
         "event_time": "2026-11-20T10:10:00Z", "arrival_time": "2026-11-20T10:30:00Z"},
        # No arrival time of its own: the pipeline's clock when it read it, two days later.
        {"event_id": "3", "player_id": "c", "event_type": "x",
         "event_time": "2026-11-20T10:20:00Z"},
    ]  # fmt: skip
    good = [json.dumps(line).encode() for line in lines]
    bad = [
        b"{not json",
        b'{"event_id": "4", "player_id": "d", "event_type": "x", "event_time": "2026-11-20T1',
        b'{"event_id": "5", "player_id": "e", "event_type": "x", "amount": "lots",'
        b' "event_time": "2026-11-20T10:00:00Z"}',
        b'{"event_id": "6", "event_type": "x", "event_time": "2026-11-20T10:00:00Z"}',
        b"[1, 2]",
    ]
    data = b"\n".join([good[0], bad[0], good[1], *bad[1:], good[2]]) + b"\n"
    config = PipelineConfig.from_dict(
        {
            "policy": {"default": "cold", "rules": [], "schema": {"columns": {"amount": "double"}}},
            "hot": {"actors": 1, "key_groups": 4},
            "cold": {"lake_uri": str(tmp_path)},
            "progress_every_s": 0,
        }
    )
    block = SourceBlock("0", 0, 7, data=data)
    summary = Pipeline(config, source=MemorySource([block]), clock=lambda: NOW).run()
    assert (summary.cold, summary.dead_letter) == (3, 5)
    code, report, err = run(
        capsys, "--lake", str(tmp_path), "--day", "2026-11-20", "--max-dead-share", "0.5"
    )
    assert code == EXIT_CROSSED, err
    assert report["dead_letters"] == 5 and report["rows"] == 3
    assert report["late_share"] == 2 / 3  # 20 minutes, and two days; not 1 minute
    assert report["crossings"] == [
        {"partition": "_dead_letter", "measure": "dead_share", "value": 5 / 8, "threshold": 0.5}
    ]
    out = tmp_path / "q.json"
    code, _, err = run(
        capsys, "--lake", str(tmp_path), "--day", "2026-11-20", "--json-out", str(out)
    )
    assert code == 0, err
    dead = json.loads(out.read_text())["dead_letters"]
    assert dead["by_reason"] == {
        "invalid_json": 2, "bad_type:amount": 1, "missing_field:player_id": 1, "not_an_object": 1
    }  # fmt: skip
    assert (dead["rows"], dead["events_rows"], dead["share"]) == (5, 3, 5 / 8)
    assert "invalid_json" in err and "40.00%" in err  # the reasons' table: 2 of 5


def test_on_an_s3_lake_with_the_report_written_to_the_bucket(
    s3_lake: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    uri, options = s3_lake
    lake = Lake(uri, options)
    rows = [event(1, 5, 1, amount=1.0), event(2, 6, 9, amount=None)]
    append(lake, table(rows, amount=pa.float64()), 0, units=("ms", "ms"))
    append(lake, table([event(3, 7, 0, region="eu")], region=pa.string()), 1, units=("us", "us"))
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"cold": {"lake_uri": uri, "storage_options": options}}))
    target = f"{uri}/_reports/{DAY}.json"
    code, summary, err = run(
        capsys, "--config", str(config), "--day", DAY, "--until", NEXT, "--json-out", target,
        "--max-null-rate", "region=0.5",
    )  # fmt: skip
    assert code == EXIT_CROSSED, err
    assert summary["crossings"] == [
        {"partition": f"dt={DAY}/hour=0", "measure": "null_rate:region", "value": 2 / 3,
         "threshold": 0.5}
    ]  # fmt: skip
    report = json.loads(s3fs.S3FileSystem(**options).cat_file(target))
    (part,) = report["partitions"]
    assert (part["rows"], part["files"], part["late"], part["timed"]) == (3, 2, 1, 3)
    assert part["null_rate"]["amount"] == 2 / 3 and part["absent"]["region"] == 2
    assert [c["version"] for c in report["schema_changes"]] == [0, 1, 3]
    assert report["schema_changes"][-1]["added"] == [{"column": "region", "type": "string"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--day", "2026-11-31"], "expected a day YYYY-MM-DD, got '2026-11-31'"),
        (["--day", "2026-11-20", "--until", "2026-11-19"], "give --until 2026-11-20 or later"),
        (["--max-null-rate", "amount"], "expected COLUMN=RATE with RATE from 0 to 1"),
        (["--max-null-rate", "amount=1.5"], "e.g. amount=0.5, got 'amount=1.5'"),
        (["--max-late-share", "2"], "expected a share from 0 to 1, e.g. 0.2, got '2'"),
        (["--late-after", "soon"], "--late-after: expected a duration like"),
        (["--max-null-rate", "amuont=0.1"], "no column amuont in"),
    ],
)
def test_bad_arguments_exit_2_naming_the_fix(
    args: list[str], message: str, hand_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--lake", hand_lake, *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err, err
    if "amuont" in args[-1]:
        assert "Fix: use one of event_id, player_id" in err and "tags" in err


def test_a_lake_without_events_or_without_a_lake_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--lake", str(tmp_path), "--day", "2026-11-20"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"no events table in {tmp_path}" in err and "Fix:" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--day", "2026-11-20"])
    assert exit_.value.code == 2 and "give --lake URI" in capsys.readouterr().err


def test_schema_changes_of_a_log_cleaned_up_to_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old commits back-dated and then removed (the log's retention), a Delta checkpoint at the
    last of them: the change after it is told against the checkpoint's schema."""
    import os

    from deltalake import DeltaTable

    lake = Lake(str(tmp_path))
    append(lake, table([event(1, 5, 1, amount=1.0)], amount=pa.float64()), 0, ("ms", "ms"))
    uri = f"{tmp_path}/{EVENTS_DIR}"
    DeltaTable(uri).create_checkpoint()  # at version 2
    log = tmp_path / EVENTS_DIR / "_delta_log"
    week_ago = (datetime.now(timezone.utc) - timedelta(days=7)).timestamp()
    for version in range(3):
        os.utime(log / f"{version:020d}.json", (week_ago, week_ago))
    for version in range(2):
        (log / f"{version:020d}.json").unlink()
    append(lake, table([event(2, 6, 1, tier="vip")], tier=pa.string()), 1, ("ms", "ms"))
    code, summary, err = run(capsys, "--lake", str(tmp_path), "--day", DAY, "--until", NEXT)
    assert code == 0, err
    assert summary["rows"] == 2 and summary["schema_changes"] == [3]
    assert "+tier string" in err and "+event_id" not in err and "no longer in the log" not in err
