"""The serving view (engine.serving, ``thermocline query``): the batch view written by
jobs.daily_features beside the hot path's state, from a bounded run's state table and from the
checkpoints of a Kafka pipeline read while it runs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from deltalake import DeltaTable

from engine.cli import main as cli
from engine.config import PipelineConfig, load_config
from engine.pipeline import Pipeline
from engine.processors.day_features import EVENT_TYPES
from engine.serving import BATCH_FEATURES_TABLE, LIVE_PREFIX, ServingView
from engine.sources import FileSource, SyntheticSource
from jobs.daily_features import main as daily_features
from tests.kafka_helpers import (
    CliRun,
    end_and_committed,
    produce,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("ray_local")

START = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def test_a_players_batch_features_beside_its_live_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "policy": {
            "default": "warm",
            "rules": [
                {
                    "name": "live",
                    "route": "hot",
                    "when": {
                        "field": "event_type",
                        "in": ["purchase", "session_start", "level_up"],
                    },
                }
            ],
        },
        "cold": {"lake_uri": str(tmp_path / "lake"), "archive": "all"},
        "warm": {"max_batch_rows": 5_000, "max_delay": "1h"},
        "progress_every_s": 0,
    }
    config = PipelineConfig.from_dict(data)
    source = SyntheticSource(
        events=12_000, players=300, seed=9, start_ms=int(START.timestamp() * 1000),
        block_rows=3_000, numeric_id_share=0.5, stale_share=0.1, late_share=0.1,
    )  # fmt: skip
    pipeline = Pipeline(config, source=source, clock=lambda: START + timedelta(seconds=1))
    pipeline.run()
    hot = {r["player_id"]: r for r in pipeline.hot_state().to_pylist()}
    pipeline.close()
    capsys.readouterr()
    lake = str(tmp_path / "lake")
    # A high quality bar: some players have no batch features, only live state.
    days = ["--day", "2026-11-19", "--until", "2026-11-20", "--quality-min", "0.95"]
    assert daily_features(["--lake", lake, *days]) == 0
    capsys.readouterr()
    features = DeltaTable(f"{lake}/{BATCH_FEATURES_TABLE}").to_pyarrow_table()
    latest = {r["player_id"]: r for r in features.to_pylist() if r["dt"] == "2026-11-20"}
    both = sorted(set(latest) & set(hot))
    live_only = sorted(set(hot) - set(latest))
    numeric = next(p for p in sorted(hot) if p.isdigit())  # asked for as an integer
    asked: list[str | int] = [both[0], int(numeric), live_only[0], "nobody"]

    view = ServingView(config)
    rows = view.players(asked).to_pylist()
    assert [r["player_id"] for r in rows] == [both[0], numeric, live_only[0], "nobody"]
    batch_columns = [n for n in features.column_names if n != "player_id"]
    for row in rows:
        player = row["player_id"]
        batch = latest.get(player, dict.fromkeys(batch_columns))
        assert {k: row[k] for k in batch_columns} == {k: batch[k] for k in batch_columns}
        live = hot.get(player, {})
        for name in next(iter(hot.values())):
            if name != "player_id":
                assert row[LIVE_PREFIX + name] == live.get(name), (player, name)
    assert rows[0]["dt"] == "2026-11-20" and rows[2]["dt"] is None  # the latest day's rows
    assert rows[2][f"{LIVE_PREFIX}events_total"] > 0
    assert all(v is None for k, v in rows[3].items() if k != "player_id")
    assert view.speed()[1] == {"from": "state/player_features"}  # a bounded run's state

    # An earlier day on demand, and the same through the CLI.
    before = {r["player_id"]: r for r in features.to_pylist() if r["dt"] == "2026-11-19"}
    player = sorted(before)[0]
    earlier = view.players([player], day="2026-11-19").to_pylist()[0]
    assert {k: earlier[k] for k in before[player]} == before[player]
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(json.dumps(data))  # YAML is a superset of JSON
    assert cli(["query", str(numeric), "--config", str(config_file), "--json"]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out.strip())
    assert printed["player_id"] == numeric
    assert printed["events"] == latest.get(numeric, {}).get("events")
    assert "side by side" in out.err and "batch view 2026-11-20" in out.err
    assert "state/player_features" in out.err


# -- the merge: batch day + the hot state's later days == all events, while the stream runs -----


def lines_from(start: datetime, seed: int) -> list[bytes]:
    source = SyntheticSource(
        events=8_000, players=400, seed=seed, start_ms=int(start.timestamp() * 1000),
        block_rows=4_000, stale_share=0.0, late_share=0.05, malformed_share=0.01, drift=0.3,
        numeric_id_share=0.3,
    )  # fmt: skip
    return [line for b in source.blocks() for line in (b.data or b"").splitlines()]


def recompute(lines: list[bytes], policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per player, the merged features over every event, as pandas computes them from the
    events the pipeline decodes (the same dead letters left out)."""
    from routers import Router, decode_ndjson

    good = decode_ndjson(b"\n".join(lines), Router.from_dict(policy).policy.schema).good
    df = good.to_pandas()
    df = df[df["quality_score"] > 0.8]
    out: dict[str, dict[str, Any]] = {}
    for player, rows in df.groupby("player_id"):
        kind = rows["event_type"]
        engaged = rows["engagement_score"].dropna()
        social = rows[kind == "social"]
        levels = rows.loc[kind == "level_up", "level"].dropna()
        out[str(player)] = {
            "events": len(rows),
            **{f"events_{t}": int((kind == t).sum()) for t in EVENT_TYPES},
            "engagement_n": len(engaged),
            "engagement_mean": engaged.mean() if len(engaged) else None,
            "spend": float(rows.loc[kind == "purchase", "amount"].fillna(0).sum()),
            "max_level": float(levels.max()) if len(levels) else None,
            "invites": int((social["action"] == "invite").sum()),
            "chats": int((social["action"] == "chat").sum()),
        }
    return out


def test_the_merged_view_equals_a_full_recompute_while_the_stream_runs(
    kafka_bootstrap: str,
    topic: str,
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[[Path, str], CliRun],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Day 1's events arrive and the batch job computes day 1 from the lake; day 2's events
    arrive; with the pipeline still running, the merged answer (batch day 1 + the hot state's
    day 2, from its checkpoints, read by another process's view) equals a recompute over both
    days, for sampled players."""
    path, group = cli_config(idle_timeout="300s", max_records=2_000)
    data = yaml.safe_load(path.read_text())
    # Declared as the demo does: an undeclared partner_id would take the type of the first one
    # seen (a number) and make the "p12" ones dead letters (the contract's rule).
    columns = {"amount": "double", "level": "int64", "partner_id": "string", "session_id": "string"}
    policy = {"schema": {"columns": columns}, "default": "hot"}
    data["policy"] = policy  # every event feeds the speed view
    data["hot"] = {"actors": 2, "key_groups": 64, "processor": "day_features"}
    data["cold"]["archive"] = "all"  # and the batch job's lake
    # The batch job's Ray workers here started before the S3 server's credentials were set in
    # the environment: the config carries them (as tests/conftest.py's s3_lake does).
    data["cold"]["storage_options"].update(
        key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    path.write_text(yaml.safe_dump(data))
    first = lines_from(datetime(2026, 11, 20, 20, 0, tzinfo=timezone.utc), seed=31)
    second = lines_from(datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc), seed=32)

    def committed() -> int:
        return sum(c or 0 for c in end_and_committed(kafka_bootstrap, topic, group)[1].values())

    run = cli_runs(path, "run")
    produce(kafka_bootstrap, topic, first)
    wait_for(lambda: committed() == len(first), 180, "day 1 checkpointed")
    assert daily_features(["--config", str(path), "--day", "2026-11-20"]) == 0
    capsys.readouterr()
    view = ServingView(load_config(path))
    # Another reader follows the checkpoints while day 2 streams in (pieces are replaced under
    # it): never an error, and a partition's position never goes back.
    seen: list[dict[str, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def follow() -> None:
        while not done.is_set():
            try:
                seen.append(view.speed()[1].get("positions", {}))
            except BaseException as error:  # raised in the test below
                errors.append(error)
                return
            time.sleep(0.05)

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        produce(kafka_bootstrap, topic, second)
        wait_for(lambda: committed() == len(first) + len(second), 120, "day 2 checkpointed")
    finally:
        done.set()
        reader.join()
    assert errors == [] and len(seen) > 3
    for partition in seen[-1]:
        series = [s[partition] for s in seen if partition in s]
        assert series == sorted(series)
    assert run.process.poll() is None  # still running: day 2 is in the speed view only

    want = recompute(first + second, policy)
    players = sorted(want)[:: max(1, len(want) // 40)]
    asked: list[str | int] = [*players, "nobody"]
    got = {r["player_id"]: r for r in view.merged(asked).to_pylist()}
    assert {r["batch_day"] for r in got.values()} == {"2026-11-20"}
    both_days = 0
    for player in players:
        row, expected_row = got[player], want[player]
        for name, value in expected_row.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value), (player, name)
            else:
                assert row[name] == value, (player, name)
        both_days += row["events"] > 0
    assert both_days == len(players) > 20
    assert got["nobody"]["events"] == 0 and got["nobody"]["max_level"] is None
    # The CLI prints the same.
    assert cli(["query", players[0], "--config", str(path), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["events"] == want[players[0]]["events"]
    assert "merged" in out.err
    run.terminate()


def test_the_merged_view_of_a_bounded_run_reads_its_state_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bounded run keeps its day_features state in a Delta table (plain lists, not the
    checkpoints' fixed-size ones): with no batch day yet (the batch job ran for the day before,
    which had no events), the merged view is the speed view alone, equal to a recompute over
    every event."""
    columns = {"amount": "double", "level": "int64", "partner_id": "string", "session_id": "string"}
    policy = {"schema": {"columns": columns}, "default": "hot"}
    data = {
        "policy": policy,
        "hot": {"actors": 1, "key_groups": 16, "processor": "day_features"},
        "cold": {"lake_uri": str(tmp_path / "lake"), "archive": "all"},
        "progress_every_s": 0,
    }
    config = PipelineConfig.from_dict(data)
    start = datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc)
    lines = lines_from(start, seed=33)
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pipeline = Pipeline(config, source=FileSource(path), clock=lambda: start)
    pipeline.run()
    pipeline.close()
    lake = str(tmp_path / "lake")
    assert daily_features(["--lake", lake, "--day", "2026-11-20"]) == 0  # a day before: empty
    capsys.readouterr()
    want = recompute(lines, policy)
    players = sorted(want)[::20]
    view = ServingView(config)
    assert view.speed()[1] == {"from": "state/day_features"}
    got = {r["player_id"]: r for r in view.merged(players).to_pylist()}
    for player in players:
        assert got[player]["batch_day"] is None
        for name, value in want[player].items():
            if isinstance(value, float):
                assert got[player][name] == pytest.approx(value), (player, name)
            else:
                assert got[player][name] == value, (player, name)
