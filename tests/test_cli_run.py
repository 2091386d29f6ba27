"""``thermocline run`` as a user runs it: a subprocess with its own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[1]


def test_run_prints_progress_and_a_json_summary(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", "examples/demo.yaml",
         "--events", "40000", "--lake", str(lake), "--num-cpus", "2", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 40_000
    assert summary["hot"] + summary["warm"] + summary["cold"] + summary["dead_letter"] == 40_000
    assert summary["lake_uri"] == str(lake) and summary["elapsed_s"] > 0
    assert "in " in done.stderr and "accounted" in done.stderr  # progress and summary for people
    cold = ds.dataset(lake / "events", format="parquet", partitioning="hive").count_rows()
    assert cold == summary["cold"]


def test_run_rejects_a_bad_config_by_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("warm: {max_delay: soon}\n")
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "warm.max_delay: expected a duration like" in done.stderr
