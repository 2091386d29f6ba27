"""``thermocline schedule``: cron intervals run once each, in order, with their bounds passed to
the job; after downtime every missed interval runs, in order; a failed interval stops the
catch-up and runs again next time; the watermark lives in the lake. Runs the real command line
(``--once --now`` stands for the clock) against a real folder lake and, for the job form, the
real ``jobs.compact`` on its own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from tests.test_compact import files_per_hour, small_files_lake

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=timezone.utc)
#: Appends "start end date" to a file, and fails while a marker file exists for that start.
RECORD = (
    "import pathlib, sys; log, start, end, date = sys.argv[1:5];"
    " sys.exit(3) if pathlib.Path(log + '.fail-' + start[:13]).exists() else"
    " open(log, 'a').write(f'{start} {end} {date}\\n')"
)


def write_schedule(tmp_path: Path, **job: Any) -> Path:
    path = tmp_path / "schedule.yaml"
    log = tmp_path / "runs.log"
    entry = {"name": "hourly", "cron": "0 * * * *", "start": T0.isoformat(),
             "command": [sys.executable, "-c", RECORD, str(log), "{start}", "{end}", "{date}"],
             **job}  # fmt: skip
    path.write_text(yaml.safe_dump({"lake": str(tmp_path / "lake"), "jobs": [entry]}))
    return path


def schedule(path: Path, now: datetime) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "schedule", str(path), "--once",
         "--now", now.isoformat()],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"},
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return done.returncode, (json.loads(lines[-1]) if lines else {}), done.stderr


def runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def hours(*offsets: int) -> list[str]:
    return [
        f"{(T0 + timedelta(hours=h)).isoformat()} {(T0 + timedelta(hours=h + 1)).isoformat()}"
        f" {(T0 + timedelta(hours=h)).date().isoformat()}"
        for h in offsets
    ]


def test_missed_intervals_run_once_each_in_order(tmp_path: Path) -> None:
    path = write_schedule(tmp_path)
    code, summary, _ = schedule(path, T0 + timedelta(hours=5, minutes=30))
    assert code == 0 and [r["status"] for r in summary["ran"]] == ["ok"] * 5
    # start is 00:00: the first fire after it ends [00:00, 01:00); the one at 05:00 is the last.
    assert runs(tmp_path) == hours(0, 1, 2, 3, 4)
    code, summary, _ = schedule(path, T0 + timedelta(hours=5, minutes=59))
    assert code == 0 and summary["ran"] == [] and len(runs(tmp_path)) == 5  # nothing twice
    # Down for a day and a bit: every missed hour runs once, in order, its date passed along.
    code, summary, _ = schedule(path, T0 + timedelta(hours=29))
    assert code == 0 and runs(tmp_path) == hours(*range(29))
    assert runs(tmp_path)[24].endswith(" 2026-11-21")


def test_a_failed_interval_stops_the_catch_up_and_runs_again_next_time(tmp_path: Path) -> None:
    path = write_schedule(tmp_path)
    marker = tmp_path / f"runs.log.fail-{(T0 + timedelta(hours=2)).isoformat()[:13]}"
    marker.touch()
    code, summary, stderr = schedule(path, T0 + timedelta(hours=4))
    assert code == 1 and [r["status"] for r in summary["ran"]] == ["ok", "ok", "exit 3"]
    assert runs(tmp_path) == hours(0, 1) and "exit 3" in stderr
    marker.unlink()
    code, summary, _ = schedule(path, T0 + timedelta(hours=4))
    assert code == 0 and runs(tmp_path) == hours(0, 1, 2, 3)


def test_a_first_run_without_start_runs_the_last_interval_only(tmp_path: Path) -> None:
    path = write_schedule(tmp_path, start=None)
    code, _, _ = schedule(path, T0 + timedelta(hours=7, minutes=10))
    assert code == 0 and runs(tmp_path) == hours(6)


def test_a_bad_schedule_is_refused_by_field(tmp_path: Path) -> None:
    path = write_schedule(tmp_path, cron="61 * * * *", retries=2)
    code, _, stderr = schedule(path, T0)
    assert code == 2
    assert "jobs[0].cron: not a cron expression" in stderr
    assert "jobs[0].retries: unknown key" in stderr


def test_a_scheduled_job_of_jobs_runs_with_its_arguments(tmp_path: Path) -> None:
    lake = tmp_path / "events-lake"
    small_files_lake(str(lake))
    path = write_schedule(
        tmp_path, command=None, job="compact", cron="0 3 * * *", args=["--lake", str(lake)]
    )
    code, summary, stderr = schedule(path, T0 + timedelta(days=1, hours=4))
    assert code == 0, stderr[-3000:]
    assert [(r["start"], r["end"]) for r in summary["ran"]] == [
        ((T0 - timedelta(hours=21)).isoformat(), (T0 + timedelta(hours=3)).isoformat()),
        ((T0 + timedelta(hours=3)).isoformat(), (T0 + timedelta(days=1, hours=3)).isoformat()),
    ]
    assert files_per_hour(f"{lake}/events") == dict.fromkeys("012", 1)  # compacted


def test_a_missing_command_fails_its_job_only_and_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    log = tmp_path / "runs.log"
    jobs = [
        {"name": "broken", "cron": "0 3 * * *", "start": T0.isoformat(),
         "command": ["no-such-program-here", "{date}"]},
        # A start given at -05:00 is the same instant; the cron's 03:00 is UTC's.
        {"name": "daily", "cron": "0 3 * * *", "start": "2026-11-19T19:00:00-05:00",
         "command": [sys.executable, "-c", RECORD, str(log), "{start}", "{end}", "{date}"]},
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"lake": str(tmp_path / "lake"), "jobs": jobs}))
    code, summary, _ = schedule(path, T0 + timedelta(hours=4))
    assert code == 1
    assert summary["ran"][0]["status"].startswith("error: FileNotFoundError")
    assert runs(tmp_path) == [
        f"{(T0 - timedelta(hours=21)).isoformat()} {(T0 + timedelta(hours=3)).isoformat()}"
        " 2026-11-19"
    ]
