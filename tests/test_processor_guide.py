"""docs/processors.md's example processors keep the contract they document, and run from the CLI
through a config's ``processors:`` list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from engine.processors import hot_processor, import_modules, warm_processor
from examples.game_processors import SpendTracker, TypeCounts
from routers import TIME_TYPE, EventSchema

ROOT = Path(__file__).resolve().parents[1]


def purchases(players: list[str], amounts: list[object]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "player_id": players,
            "event_time": pa.array([1_764_000_000_000] * len(players), pa.int64()).cast(TIME_TYPE),
            "event_type": ["purchase"] * len(players),
            "amount": pa.array([str(a) if a is not None else None for a in amounts]),
        }
    )


def test_a_snapshot_restored_elsewhere_gives_the_same_state_and_release_drops_keys() -> None:
    one = SpendTracker(EventSchema())
    one.process(purchases(["p1", "p2", "p1"], [5, "x", 2.5]))
    two = SpendTracker(EventSchema())
    # Restored from two halves, as two source partitions' checkpoints would be.
    snapshot = one.snapshot()
    two.restore(snapshot.slice(0, 1))
    two.restore(snapshot.slice(1))
    assert two.state().sort_by("player_id").equals(one.state().sort_by("player_id"))
    assert two.release(pa.array(["p1", "nobody"])) == 1
    assert two.release(pa.array(["p1"])) == 0  # idempotent
    assert two.state()["player_id"].to_pylist() == ["p2"]


def test_alerts_fire_once_when_spend_crosses_the_threshold() -> None:
    tracker = SpendTracker(EventSchema(), big_spender=10)
    assert tracker.process(purchases(["p1"], [6])) is None
    alert = tracker.process(purchases(["p1", "p1"], [3, 2]))
    assert alert is not None and alert.to_pylist() == [{"player_id": "p1", "spend": 11.0}]
    assert tracker.process(purchases(["p1"], [50])) is None  # already past it


def test_hostile_values_are_skipped_not_raised_on() -> None:
    tracker = SpendTracker(EventSchema())
    batch = pa.record_batch(
        {
            "player_id": [1, None, 3],
            "event_type": [None, "purchase", "purchase"],
            "amount": [{"a": 1}, None, {"a": 2}],
            "level": ["max", "7", None],
        }
    )
    tracker.process(batch)
    assert tracker.state().num_rows == 3
    counts = TypeCounts(EventSchema()).process(
        pa.record_batch({"event_time": pa.array([0], TIME_TYPE), "event_type": [7]})
    )
    assert counts.to_pylist()[0]["event_type"] == "7"


def test_the_config_modules_register_their_names() -> None:
    import_modules(["examples.game_processors"])
    assert hot_processor("spend_tracker") is SpendTracker
    assert warm_processor("type_counts") is TypeCounts


def test_the_guide_config_runs_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "custom.yaml"
    text = (ROOT / "examples" / "custom.yaml").read_text()
    text = text.replace("policy: policy.yaml", f"policy: {ROOT / 'examples' / 'policy.yaml'}")
    config.write_text(text.replace("big_spender: 50", "big_spender: 4"))
    lake = tmp_path / "lake"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(config), "--events", "20000",
         "--lake", str(lake), "--num-cpus", "2", "--json", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    counts = ds.dataset(lake / "warm" / "type_counts", format="parquet").to_table()
    assert set(counts.column_names) == {"minute", "event_type", "events"}
    assert sum(counts["events"].to_pylist()) == summary["warm"]  # partial counts add up
    assert summary["alerts"] > 0
    alerts = ds.dataset(lake / "hot" / "spend_tracker", format="parquet").to_table()
    assert alerts.num_rows == summary["alerts"] and alerts.column_names == ["player_id", "spend"]
    # The hot state, one row per player, is in the lake after a bounded run.
    state = ds.dataset(lake / "state" / "spend_tracker", format="parquet").to_table()
    assert state.column_names == ["player_id", "purchases", "spend", "max_level"]
    assert state.num_rows == len(set(state["player_id"].to_pylist())) > 0
    # Purchases reach the hot path by the policy's first rule (purchases and refunds).
    assert 0 < sum(state["purchases"].to_pylist()) <= summary["per_rule"]["monetization"]
    assert set(summary["outputs"]) == {
        "cold_events",
        "warm",
        "hot_outputs",
        "hot_state",
        "dead_letter",
    }


def test_the_installed_command_finds_processors_in_the_working_directory() -> None:
    # The console script, unlike `python -m`, does not put the working directory on sys.path.
    command = Path(sys.executable).parent / "thermocline"
    done = subprocess.run([str(command), "validate", "examples/custom.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "hot: 2 actors of spend_tracker" in done.stdout
