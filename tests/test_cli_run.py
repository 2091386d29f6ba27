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
    assert "Token authentication" not in done.stderr  # Ray's notice only with -v
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


def test_the_cli_takes_what_real_clients_send(tmp_path: Path) -> None:
    """The issue's reproducer and its neighbours, through ``thermocline run`` as a user runs it:
    fields that differ by event type and by block, numeric ids, hostile bytes."""
    t = 1_764_000_000_000
    events = []
    for i in range(300):  # 100 without amount, 100 with 4.99, 100 with 5: blocks of 100
        event = {"event_id": f"e{i}", "player_id": f"p{i % 9}", "event_time": t + i,
                 "event_type": "social"}  # fmt: skip
        if i >= 100:
            event["amount"] = 4.99 if i < 200 else 5
        events.append(json.dumps(event).encode())
    events.append(b'{"event_id":"n1","player_id":9100000000000001,"event_time":1764000000,'
                  b'"event_type":"purchase","level":"max"}')  # fmt: skip
    bad = [
        b'{"event_id":"u1","player_id":"p\xff","event_time":1764000000000,"event_type":"x"}',
        b'{"event_id":"c1","player_id":"p\tq","event_time":1764000000000,"event_type":"x"}',
        b'{"event_id":"o1","player_id":"p","event_time":99999999999999999999,"event_type":"x"}',
        b'{"event_id":"e1"}{"event_id":"e2"}',
        b"",  # blank: not an event
    ]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(events + bad) + b"\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(f"source: {{kind: file, path: {path}, block_rows: 1}}\n")
    lake = tmp_path / "lake"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(config),
         "--lake", str(lake), "--num-cpus", "2", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 305
    assert summary["dead_letter"] == 4
    assert summary["hot"] + summary["warm"] + summary["cold"] == 301
    dead = ds.dataset(lake / "_dead_letter", format="parquet").to_table().to_pylist()
    assert sorted(d["raw"] for d in dead) == sorted(bad[:4])
    assert sorted(d["reason"] for d in dead) == [
        "bad_value:event_time",
        "invalid_json",
        "invalid_json",
        "invalid_utf8",
    ]


def test_a_file_read_whole_is_skipped_and_a_new_file_under_its_name_is_new_data(
    tmp_path: Path,
) -> None:
    """As a user tried it: a second ``events.ndjson`` of the same length dropped into the same
    folder used to replace the first one's cold rows (same lake file names). Now a file is known
    by its path, size and modification time: the same file again is skipped with a line, a new
    one under the old name is read, and the lake keeps both."""
    from engine.sources import SyntheticSource

    folder, lake = tmp_path / "in", tmp_path / "lake"
    folder.mkdir()
    source = SyntheticSource(events=3_000, start_ms=1_764_000_000_000, malformed_share=0)
    first = b"".join(b.data or b"" for b in source.blocks() if b)
    (folder / "events.ndjson").write_bytes(first)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"}

    def run() -> tuple[dict, str]:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run", "--source", "file", "--path",
             str(folder), "--lake", str(lake), "--num-cpus", "2", "--json", "-q"],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    def cold_ids() -> list[str]:
        table = ds.dataset(lake / "events", format="parquet").to_table(columns=["event_id"])
        return sorted(table["event_id"].to_pylist())

    summary, _ = run()
    assert summary["events_in"] == 3_000 and summary["cold"] > 0
    before = cold_ids()
    again, err = run()  # the same file: skipped, said so
    assert again["events_in"] == 0 and cold_ids() == before
    assert "events.ndjson" in err and "skipped: read whole into the lake" in err
    # New content, same name and length (ids e0.. become f0..), written later.
    second = first.replace(b'"event_id":"e', b'"event_id":"f')
    assert len(second) == len(first)
    (folder / "events.ndjson").write_bytes(second)
    third, _ = run()
    assert third["events_in"] == 3_000 and third["cold"] == summary["cold"]
    ids = cold_ids()
    assert len(ids) == 2 * len(before) and ids[: len(before)] == before  # both files, all rows
