"""The daily features job (jobs.daily_features) on real lakes: values checked by hand on a small
hand-made day, and against DuckDB's reading of a drifting synthetic stream the real pipeline
archived; a re-run replaces its day in one commit; bad lakes and arguments are named."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable

from engine.config import PipelineConfig
from engine.delta import LakeTables
from engine.lake import COLD, EVENTS_DIR, Lake
from engine.pipeline import Pipeline
from engine.sources import SyntheticSource
from jobs.daily_features import EVENT_TYPES, FEATURES_TABLE, STATS_TABLE, main

pytestmark = pytest.mark.usefixtures("ray_local")

DAY = "2026-11-20"
T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """The job's exit code, its one-line JSON summary (stdout's last line) and its stderr."""
    code = main(list(args))
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}, out.err


def append(lake: Lake, rows: list[dict[str, Any]], position: int) -> None:
    """Commit ``rows`` to the events table as a pipeline does (one file per hour folder)."""
    names = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist: first row's only
    table = pa.Table.from_pylist([{k: row.get(k) for k in names} for row in rows])
    times = pc.cast(table["event_time"], pa.timestamp("ms", "UTC"))
    table = table.set_column(table.schema.get_field_index("event_time"), "event_time", times)
    tables = LakeTables(lake, "pipe")
    tables.ensure(EVENTS_DIR, ("dt", "hour"))
    staged = lake.stage_partitioned(table, "event_time", f"t.p-{position}", "p")
    assert tables.commit(EVENTS_DIR, staged, {"p": {COLD: position}}, (COLD,), ("dt", "hour")) == []


def event(player: str, kind: str, minute: int, quality: float | None = 0.9, **fields: Any) -> dict:
    return {
        "event_id": f"{player}-{kind}-{minute}",
        "player_id": player,
        "event_type": kind,
        "event_time": T0 + timedelta(minutes=minute),
        "quality_score": quality,
        **fields,
    }


def features(root: str, day: str = DAY, options: dict[str, Any] | None = None) -> list[dict]:
    table = DeltaTable(f"{root}/{FEATURES_TABLE}", storage_options=options)
    rows = table.to_pyarrow_table(filters=[("dt", "=", day)])
    return rows.sort_by("player_id").to_pylist()


def test_a_hand_made_day_gives_the_features_worked_out_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = Lake(str(tmp_path))
    # Player a, over two hour folders (two files) and two commits: a session that starts in
    # hour 0 and ends in hour 1 counts once; a second session has only its end.
    append(lake, [
        event("a", "session_start", 5, session_id="s1", engagement_score=0.5),
        event("a", "level_up", 10, level=3, engagement_score=float("nan")),  # NaN: skipped
        event("a", "purchase", 20, amount=4.99),
        event("a", "purchase", 21, amount=5.0, quality=0.5),  # low quality: left out
        event("a", "social", 30, partner_id="b", action="invite"),
        event("a", "social", 31, partner_id="b", action="chat"),
        event("b", "social", 40, partner_id="a", action="gift", quality=None),  # no score: out
        event("b", "match_end", 50, engagement_score=1.0),
        event("x", "level_up", -10, level=99),  # the day before: not in this day
    ], position=0)  # fmt: skip
    append(lake, [
        event("a", "session_end", 70, session_id="s1", session_length_s=3900.0),
        event("a", "session_end", 80, session_id="s2", session_length_s=300.0),
        event("a", "level_up", 85, level=5, engagement_score=0.7),
        event("a", "custom_thing", 86),  # a type without its own count: in `events` only
        event("b", "social", 90, partner_id="c", action="chat", engagement_score=0.0),
    ], position=1)  # fmt: skip
    code, summary, err = run(capsys, "--lake", str(tmp_path), "--day", DAY, "--shards", "3")
    assert code == 0, err
    assert summary["days"][0] | {"events_version": 0} == {
        "day": DAY, "events_version": 0, "folders": 2, "rows_read": 13, "rows_kept": 11,
        "values_unreadable": 1, "players": 2,  # the NaN engagement score
    }  # fmt: skip
    a, b = features(str(tmp_path))
    zero = {f"events_{t}": 0 for t in EVENT_TYPES}
    assert {k: v for k, v in a.items() if not k.endswith("_z")} == {
        "dt": DAY, "player_id": "a", "events": 9, "engagement_mean": (0.5 + 0.7) / 2,
        "engagement_n": 2, **zero, "events_session_start": 1, "events_session_end": 2,
        "events_level_up": 2, "events_purchase": 1, "events_social": 2, "spend": 4.99,
        "sessions": 2, "session_length_mean": 2100.0, "session_length_max": 3900.0,
        "max_level": 5.0, "levels_per_hour": 2 / (4200 / 3600), "partners": 1, "invites": 1,
        "chats": 1,
    }  # fmt: skip
    assert {k: v for k, v in b.items() if not k.endswith("_z")} == {
        "dt": DAY, "player_id": "b", "events": 2, "engagement_mean": 0.5, "engagement_n": 2, **zero,
        "events_match_end": 1, "events_social": 1, "spend": 0.0, "sessions": 0,
        "session_length_mean": None, "session_length_max": None, "max_level": None,
        "levels_per_hour": None, "partners": 1, "invites": 0, "chats": 1,
    }  # fmt: skip
    # z-scores over the two players; a feature only one player has is 0 for them, null else.
    assert a["events_z"] == pytest.approx(1.0) and b["events_z"] == pytest.approx(-1.0)
    assert (a["max_level_z"], b["max_level_z"]) == (0.0, None)
    assert (a["partners_z"], b["partners_z"]) == (0.0, 0.0)  # equal values: no spread
    stats = {r["feature"]: r for r in DeltaTable(f"{tmp_path}/{STATS_TABLE}").to_pyarrow_table()
             .to_pylist()}  # fmt: skip
    assert stats["events"] | {"dt": DAY} == {
        "dt": DAY, "feature": "events", "count": 2, "mean": 5.5, "std": 3.5, "min": 2.0,
        "max": 9.0,
    }  # fmt: skip
    assert stats["max_level"]["count"] == 1 and stats["session_length_mean"]["std"] == 0.0


# -- a drifting synthetic stream, archived by the real pipeline, against DuckDB -------------------

START = datetime(2026, 11, 20, 0, 5, tzinfo=timezone.utc)  # stale events fall on the days before

REFERENCE = """
SELECT player_id,
  count(*) AS events,
  avg(CASE WHEN isfinite(engagement_score) THEN engagement_score END) AS engagement_mean,
  count(CASE WHEN isfinite(engagement_score) THEN 1 END) AS engagement_n,
  {type_counts},
  coalesce(sum(TRY_CAST(amount AS DOUBLE)) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
  count(DISTINCT session_id) FILTER (WHERE event_type IN ('session_start', 'session_end'))
    AS sessions,
  avg(session_length_s) FILTER (WHERE event_type = 'session_end') AS session_length_mean,
  max(session_length_s) FILTER (WHERE event_type = 'session_end') AS session_length_max,
  max(TRY_CAST(level AS DOUBLE)) FILTER (WHERE event_type = 'level_up') AS max_level,
  CASE WHEN sum(session_length_s) FILTER (WHERE event_type = 'session_end') > 0
    THEN count(*) FILTER (WHERE event_type = 'level_up')
      / (sum(session_length_s) FILTER (WHERE event_type = 'session_end') / 3600.0) END
    AS levels_per_hour,
  count(DISTINCT partner_id) FILTER (WHERE event_type = 'social') AS partners,
  count(*) FILTER (WHERE event_type = 'social' AND action = 'invite') AS invites,
  count(*) FILTER (WHERE event_type = 'social' AND action = 'chat') AS chats
FROM events WHERE dt = $day AND quality_score > $quality
GROUP BY player_id ORDER BY player_id
"""


def reference(events: pa.Table, day: str, quality: float = 0.8) -> list[dict[str, Any]]:
    """The features as DuckDB computes them from the events table read whole."""
    counts = ", ".join(
        f"count(*) FILTER (WHERE event_type = '{t}') AS events_{t}" for t in EVENT_TYPES
    )
    sql = REFERENCE.format(type_counts=counts)
    con = duckdb.connect()
    con.register("events", events)
    cursor = con.execute(sql, {"day": day, "quality": quality})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want) > 0
    for row, expected in zip(got, want, strict=True):
        for name, value in expected.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, rel=1e-9), (row["player_id"], name)
            else:
                assert row[name] == value, (row["player_id"], name)


@pytest.fixture(scope="module")
def archived_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake every event of a drifting synthetic stream went to (cold.archive: all): numeric
    player ids, missing fields, levels sent as text ("12", "max") and kept as text."""
    root = str(tmp_path_factory.mktemp("lake"))
    config = PipelineConfig.from_dict(
        {
            "policy": {
                "schema": {"columns": {"level": "string", "amount": "double"}},
                "default": "warm",
                "rules": [
                    {
                        "name": "money",
                        "route": "hot",
                        "when": {"field": "event_type", "in": ["purchase", "refund"]},
                    },
                    {"name": "stale", "route": "cold", "when": {"age": {"gt": "1h"}}},
                ],
            },
            "hot": {"actors": 1, "key_groups": 16},
            "warm": {"max_batch_rows": 10_000, "max_delay": "1h"},
            "cold": {"lake_uri": root, "archive": "all", "flush_interval": "1h"},
            "progress_every_s": 0,
        }
    )
    source = SyntheticSource(
        events=30_000, players=800, seed=3, start_ms=int(START.timestamp() * 1000),
        block_rows=5_000, stale_share=0.3, late_share=0.1, drift=0.5, missing_share=0.2,
    )  # fmt: skip
    summary = Pipeline(config, source=source, clock=lambda: START + timedelta(seconds=1)).run()
    assert summary.hot > 0 and summary.warm > 0 and summary.cold > 0  # all three archived
    return root


def test_features_of_a_drifting_stream_equal_duckdbs_reading_of_the_lake(
    archived_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = DeltaTable(f"{archived_lake}/{EVENTS_DIR}").to_pyarrow_table()
    assert set(events["route"].unique().to_pylist()) == {"hot", "warm", "cold"}
    days = ["2026-11-18", "2026-11-19", "2026-11-20"]
    code, summary, err = run(
        capsys, "--lake", archived_lake, "--day", days[0], "--until", days[-1], "--shards", "3"
    )
    assert code == 0, err
    assert [d["day"] for d in summary["days"]] == days
    for day, done in zip(days, summary["days"], strict=True):
        want = reference(events, day)
        same(features(archived_lake, day), want)
        of_day = events.filter(pc.equal(events["dt"], day))
        assert done["rows_read"] == of_day.num_rows and done["players"] == len(want)
        level = of_day["level"]
        text = pc.and_(pc.is_valid(level), pc.invert(pc.match_substring_regex(level, r"^\d+$")))
        assert done["values_unreadable"] == pc.sum(text).as_py()  # "max", counted, not read
    assert sum(d["values_unreadable"] for d in summary["days"]) > 0  # the drift was there
    # The statistics are those of the features, and the z-scores follow from them.
    today = pa.Table.from_pylist(features(archived_lake, days[-1]))
    stats = DeltaTable(f"{archived_lake}/{STATS_TABLE}").to_pyarrow_table(
        filters=[("dt", "=", days[-1])]
    )
    for row in stats.to_pylist():
        values = pc.cast(today[row["feature"]], pa.float64())
        assert row["mean"] == pytest.approx(pc.mean(values).as_py())
        assert row["std"] == pytest.approx(pc.stddev(values).as_py())
        z = today[f"{row['feature']}_z"].to_pylist()
        for value, scored in zip(values.to_pylist(), z, strict=True):
            if value is None:
                assert scored is None
            elif row["std"]:
                assert scored == pytest.approx((value - row["mean"]) / row["std"])


def test_a_rerun_replaces_its_day_in_one_commit_and_leaves_the_others(
    archived_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = DeltaTable(f"{archived_lake}/{EVENTS_DIR}").to_pyarrow_table()
    days = ["2026-11-19", "2026-11-20"]
    assert run(capsys, "--lake", archived_lake, "--day", days[0], "--until", days[1])[0] == 0
    table = DeltaTable(f"{archived_lake}/{FEATURES_TABLE}")
    before = table.version()
    # A scheduler's catch-up runs the day again, here with another quality bar: the day's rows
    # are replaced (not added to), in one commit; the other day is untouched.
    code, _, err = run(capsys, "--lake", archived_lake, "--day", days[1], "--quality-min", "0.5")
    assert code == 0, err
    table = DeltaTable(f"{archived_lake}/{FEATURES_TABLE}")
    assert table.version() == before + 1
    same(features(archived_lake, days[1]), reference(events, days[1], quality=0.5))
    same(features(archived_lake, days[0]), reference(events, days[0]))
    # The version before the re-run still reads as it was (time travel: readers never mixed).
    old = DeltaTable(f"{archived_lake}/{FEATURES_TABLE}", version=before)
    rows = old.to_pyarrow_table(filters=[("dt", "=", days[1])]).sort_by("player_id").to_pylist()
    same(rows, reference(events, days[1]))


def test_a_day_without_events_is_replaced_by_an_empty_one(
    archived_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary, _ = run(capsys, "--lake", archived_lake, "--day", "2026-10-01")
    assert code == 0 and summary["days"][0]["players"] == 0
    assert features(archived_lake, "2026-10-01") == []


def test_on_an_s3_lake(
    s3_lake: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, options = s3_lake
    lake = Lake(uri, options)
    append(lake, [event("p1", "purchase", 1, amount=2.5), event("p2", "level_up", 2, level=7)], 0)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"cold": {"lake_uri": uri, "storage_options": options}}))
    code, _, err = run(capsys, "--config", str(config), "--day", DAY)
    assert code == 0, err
    got = features(uri, options=LakeTables(lake, "x").options)
    assert [(r["player_id"], r["spend"], r["max_level"]) for r in got] == [
        ("p1", 2.5, None), ("p2", 0.0, 7.0)
    ]  # fmt: skip


def test_a_column_of_an_unusable_type_is_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append(Lake(str(tmp_path)), [event("a", "level_up", 1, level={"major": 3})], 0)
    code, _, err = run(capsys, "--lake", str(tmp_path), "--day", DAY)
    assert code == 2
    assert "events column level is struct" in err and "policy.schema.columns" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--day", "2026-11-31"], "expected a day YYYY-MM-DD, got '2026-11-31'"),
        (["--day", DAY, "--until", "2026-11-19"], "give --until 2026-11-20 or later"),
        ([], "no events table"),
    ],
)
def test_bad_arguments_are_named(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--lake", str(tmp_path), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_nan_free_reference_sanity() -> None:
    """The DuckDB reference treats NaN as the job does (a check of the reference itself)."""
    events = pa.table(
        {
            "player_id": ["a", "a"], "dt": [DAY, DAY], "quality_score": [0.9, 0.9],
            "engagement_score": [math.nan, 1.0], "event_type": ["x", "x"],
            "amount": [None, None], "session_id": [None, None],
            "session_length_s": [None, None], "level": [None, None],
            "partner_id": [None, None], "action": [None, None],
        }
    )  # fmt: skip
    assert reference(events, DAY)[0]["engagement_mean"] == 1.0


def test_a_lake_in_a_folder_whose_name_needs_escaping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """delta-rs escapes a table's root in its file URIs: the job must find the files anyway."""
    root = str(tmp_path / "my lake")
    append(Lake(root), [event("a", "purchase", 1, amount=1.5), event("b", "social", 2)], 0)
    code, summary, err = run(capsys, "--lake", root, "--day", DAY)
    assert code == 0, err
    assert summary["days"][0]["rows_read"] == 2
    assert [(r["player_id"], r["spend"]) for r in features(root)] == [("a", 1.5), ("b", 0.0)]


def test_numbers_read_as_the_speed_view_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text numbers with spaces are read (" 12 "), infinities, booleans and words are left out
    and counted, in a column the lake holds as text: never a failed day."""
    append(Lake(str(tmp_path)), [
        event("a", "level_up", 1, level=" 12 "), event("a", "level_up", 2, level="max"),
        event("a", "level_up", 3, level="inf"), event("a", "level_up", 4, level="true"),
        event("a", "purchase", 5, amount="4.5\n"), event("a", "purchase", 6, amount="1e999"),
    ], 0)  # fmt: skip
    code, summary, err = run(capsys, "--lake", str(tmp_path), "--day", DAY)
    assert code == 0, err
    assert summary["days"][0]["values_unreadable"] == 4  # max, inf, true, 1e999
    (row,) = features(str(tmp_path))
    assert (row["max_level"], row["spend"], row["events_level_up"]) == (12.0, 4.5, 4)
