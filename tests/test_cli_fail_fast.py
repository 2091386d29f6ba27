"""The first hour: ``thermocline run`` refuses what cannot work in one line, before Ray starts,
and stops on Ctrl-C or SIGTERM at any moment, leaving no Ray process behind.

Each test runs the real command in a subprocess. Ray's processes inherit the command's
environment, so a marker variable finds any that outlived it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def survivors(mark: str) -> list[int]:
    """Processes (other than this one) whose environment carries ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"TC_TEST_MARK={mark}".encode() in environ:
            found.append(int(entry.name))
    return found


def start(*args: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    mark = uuid.uuid4().hex
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TC_TEST_MARK": mark}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    return process, mark


def run(*args: str, tmp_path: Path, timeout: float = 120) -> tuple[int, str, str]:
    process, mark = start(*args, tmp_path=tmp_path)
    out, err = process.communicate(timeout=timeout)
    assert survivors(mark) == [], "Ray processes outlived the command"
    return process.returncode, out, err


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("thermocline:")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def test_an_unwritable_lake_is_refused_before_any_event(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    started = time.monotonic()
    status, _, err = run(
        "run", "--events", "1000", "--lake", str(a_file / "lake"), tmp_path=tmp_path
    )
    assert status == 2
    line = one_line(err)
    assert "cold.lake_uri" in line and str(a_file / "lake") in line and "--lake" in line
    assert time.monotonic() - started < 30  # before Ray started, not after every event


def test_a_missing_source_path_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "file.yaml"
    config.write_text(f"source: {{kind: file, path: {tmp_path / 'nowhere.ndjson'}}}\n")
    status, _, err = run("run", "--config", str(config), "--lake", str(tmp_path / "lake"),
                         tmp_path=tmp_path)  # fmt: skip
    assert status == 2
    line = one_line(err)
    assert "source.path" in line and "nowhere.ndjson" in line and "does not exist" in line


def test_an_unreachable_broker_fails_in_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    status, _, err = run(
        "run", "--source", "kafka", "--bootstrap", "127.0.0.1:9", "--topic", "t", "--name", "n",
        "--lake", str(tmp_path / "lake"), tmp_path=tmp_path,
    )  # fmt: skip
    assert status == 1
    line = one_line(err)
    assert "source.bootstrap" in line and "127.0.0.1:9" in line
    assert time.monotonic() - started < 20  # was NoBrokersAvailable after 35 s


def test_a_bad_cpu_count_is_a_usage_error(tmp_path: Path) -> None:
    status, _, err = run("run", "--num-cpus", "-1", tmp_path=tmp_path)
    assert status == 2
    assert "--num-cpus: expected a positive integer, got -1" in err
    assert "Traceback" not in err


def test_paths_that_could_never_be_placed_are_refused_with_the_arithmetic(tmp_path: Path) -> None:
    # 12 hot actors on 2 CPUs used to wait forever, deaf to SIGINT and SIGTERM.
    config = tmp_path / "big.yaml"
    config.write_text("hot: {actors: 12}\n")
    status, _, err = run("run", "--config", str(config), "--num-cpus", "2",
                         "--lake", str(tmp_path / "lake"), tmp_path=tmp_path)  # fmt: skip
    assert status == 2
    line = one_line(err)
    assert "12 hot actors x 0.25 CPU" in line and "= 3.5 CPUs, but this Ray has 2" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    status, _, err = run("--debug", "run", "--lake", str(a_file / "lake"), tmp_path=tmp_path)
    assert status == 1 and "Traceback" in err and "StartupError" in err


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("thermocline 0.")


@pytest.mark.parametrize(
    ("signum", "delay_s"),
    [(signal.SIGINT, 0.3), (signal.SIGTERM, 0.3), (signal.SIGINT, 2.0), (signal.SIGTERM, 2.0)],
)
def test_a_signal_during_start_up_stops_it(tmp_path: Path, signum: int, delay_s: float) -> None:
    """Inside ``ray.init``: early, and ~2 s in, while the raylet starts its agents (a SIGTERM
    there used to leave the dashboard and runtime-env agents running for 30-40 s)."""
    process, mark = start("run", "--events", "1000000", "--lake", str(tmp_path / "lake"),
                          "--num-cpus", "2", tmp_path=tmp_path)  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("starting a local Ray"):
            break
    time.sleep(delay_s)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert one_line(err) == "thermocline: stopped"
    assert "events in" not in err  # no event was read
    assert survivors(mark) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_run_stops_it_after_the_current_block(
    tmp_path: Path, signum: int
) -> None:
    # Paced, so that the run is surely still going when the signal comes.
    process, mark = start("run", "--events", "2000000", "--rate", "100000",
                          "--lake", str(tmp_path / "lake"), "--num-cpus", "2",
                          tmp_path=tmp_path)  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:  # the first progress line: events are flowing
        if line.startswith("["):
            break
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    stopped = [line for line in out.splitlines() if line.startswith("stopped by")]
    assert stopped and stopped[0].startswith(f"stopped by {name} after ")
    assert stopped[0].endswith(" of 2,000,000 events")
    assert "accounted" in out and "ok" in out.split("accounted", 1)[1].splitlines()[0]
    assert "Traceback" not in err
    assert survivors(mark) == []


def test_a_file_source_stops_when_asked(tmp_path: Path) -> None:
    source = tmp_path / "events.ndjson"
    line = b'{"event_id":"e","player_id":"p1","event_time":1764000000000,"event_type":"x"}\n'
    source.write_bytes(line * 3_000_000)
    config = tmp_path / "file.yaml"
    config.write_text(f"source: {{kind: file, path: {source}, block_rows: 20000}}\n")
    process, mark = start("run", "--config", str(config), "--lake", str(tmp_path / "lake"),
                          "--num-cpus", "2", tmp_path=tmp_path)  # fmt: skip
    assert process.stderr is not None
    for text in process.stderr:
        if text.startswith("["):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    stopped = next(x for x in out.splitlines() if x.startswith("stopped by SIGINT after "))
    read = int(stopped.split("after ", 1)[1].split(" ", 1)[0].replace(",", ""))
    assert 0 < read < 3_000_000  # it did not read the whole file first
    assert survivors(mark) == []


def test_flags_of_another_source_are_refused_not_ignored(tmp_path: Path) -> None:
    events = tmp_path / "e.ndjson"
    events.write_text(
        '{"event_id":"e","player_id":"p","event_time":1764000000000,"event_type":"x"}\n'
    )
    status, _, err = run("run", "--source", "file", "--path", str(events), "--events", "10",
                         "--lake", str(tmp_path / "lake"), tmp_path=tmp_path)  # fmt: skip
    assert status == 2
    assert one_line(err) == (
        "thermocline: --events: applies to a synthetic source, and this run reads a file"
        " source; drop --events, or add --source synthetic"
    )


def test_a_file_source_reads_a_hive_folder_recursively_with_a_policy_file(tmp_path: Path) -> None:
    line = (
        '{{"event_id":"e{i}","player_id":"p{i}","event_time":1764000000000,"event_type":"{t}"}}\n'
    )
    folder = tmp_path / "in"
    for day, kind in (("2026-11-26", "purchase"), ("2026-11-27", "level_up")):
        (folder / f"dt={day}" / "hour=10").mkdir(parents=True)
        text = "".join(line.format(i=i, t=kind) for i in range(50))
        (folder / f"dt={day}" / "hour=10" / "part-0.ndjson").write_text(text)
    (folder / "_state").mkdir()
    (folder / "_state" / "skip.ndjson").write_text("not read\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - {name: buys, route: hot, when: {field: event_type, eq: purchase}}\n"
    )
    status, out, err = run("run", "--source", "file", "--path", str(folder), "--policy",
                           str(policy), "--lake", str(tmp_path / "lake"), "--num-cpus", "2",
                           "--json", "--quiet", tmp_path=tmp_path)  # fmt: skip
    assert status == 0, err[-2000:]
    assert f"file source: 2 files in {folder}" in err
    assert not any("s] in " in x for x in err.splitlines())  # --quiet: no progress lines
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["events_in"], summary["hot"], summary["warm"]) == (100, 50, 50)
    assert summary["per_rule"] == {"buys": 50, "default": 50}


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--source", "kafka", "--topic", "t", "--bootstrap", "localhost", "--name", "n"],
         "source.bootstrap: 'localhost' needs a port, as host:port"),
        (["--policy", "examples/demo.yaml"],
         "examples/demo.yaml is a pipeline config, not a policy"),
    ],
)  # fmt: skip
def test_mistakes_that_are_told_apart(tmp_path: Path, args: list[str], line: str) -> None:
    status, _, err = run("run", *args, "--lake", str(tmp_path / "lake"), tmp_path=tmp_path)
    assert status == 2 and line in err and "Traceback" not in err


def test_a_folder_without_event_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no events here\n")
    status, _, err = run("run", "--source", "file", "--path", str(tmp_path / "in"),
                         "--lake", str(tmp_path / "lake"), tmp_path=tmp_path)  # fmt: skip
    assert status == 2
    assert "source.path: no .ndjson, .jsonl, .json or .parquet file in" in one_line(err)
