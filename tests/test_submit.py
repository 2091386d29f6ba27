"""Jobs submitted to a real Ray head through the Ray Jobs API: ``thermocline submit`` and plain
``ray job submit`` run ``jobs.compact`` on the cluster with the project as its working_dir, stream
its output, and exit with the job's status. The head is ``ray start --head --block`` on
127.0.0.1 in a temporary folder, with Ray 2.60's token authentication as it comes (on)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.test_compact import files_per_hour, small_files_lake

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment() -> dict[str, str]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"}
    # A job's `python` is the head's: the project's venv, as on a cluster's nodes, where Ray
    # and the project's dependencies are installed into the python on PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A Ray head of its own (GCS and dashboard on free loopback ports); its Jobs API URL."""
    temp = tempfile.mkdtemp(prefix="tc-head-", dir="/tmp")
    dashboard = free_port()
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp}",
         # Not the agent's default port (52365): another Ray on this machine (the session's
         # ray_local, another test process) holding it leaves this head with no job agent.
         f"--dashboard-agent-listen-port={free_port()}",
         "--disable-usage-stats"],
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped by id, with its children
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address],
                env={**environment(), "RAY_AUTH_MODE": "token"}, capture_output=True,
                timeout=60, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            assert process.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, probe.stderr[-2000:]
            time.sleep(1)
        yield address
    finally:
        stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(process: subprocess.Popen, wait_s: float = 10) -> None:
    """Stop ``ray start --head --block`` (started in a session of its own) and its children:
    SIGTERM to it (it stops what it started, ~2 s here; a SIGTERM to its whole group left it
    running past 20 s), then SIGKILL to whatever of its process group is left."""
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def thermocline(*args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env=environment(), timeout=300, check=False,
    )  # fmt: skip


def summary_of(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith('{"job"')]
    assert lines, stdout[-2000:]
    return dict(json.loads(lines[-1]))


def test_thermocline_submit_runs_a_job_on_the_cluster(head: str, tmp_path: Path) -> None:
    small_files_lake(str(tmp_path))
    done = thermocline("submit", "compact", "--lake", str(tmp_path), "--address", head)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done.stdout)  # the job's own output, streamed back
    assert summary["tables"]["events"]["removed"] == 18
    assert files_per_hour(f"{tmp_path}/events") == dict.fromkeys("012", 1)
    assert "submitted " in done.stderr


def test_a_failing_job_fails_the_submit_with_its_exit_code(head: str, tmp_path: Path) -> None:
    done = thermocline("submit", "compact", "--address", head)  # no --lake: the job exits 2
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert "FAILED" in done.stderr and "--lake" in done.stdout + done.stderr
    unknown = thermocline("submit", "no_such_job", "--address", head)
    assert unknown.returncode == 2 and "the jobs are: compact" in unknown.stderr


def test_plain_ray_job_submit_runs_a_job_too(head: str, tmp_path: Path) -> None:
    small_files_lake(str(tmp_path))
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head, "--working-dir", ".", "--",
         "python", "-m", "jobs.compact", "--lake", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env={**environment(), "RAY_AUTH_MODE": "token"},
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary_of(done.stdout)["tables"]["events"]["added"] == 3
    assert len(DeltaTable(f"{tmp_path}/events").file_uris()) == 3


def test_the_jobs_own_arguments_reach_it_unabbreviated() -> None:
    from engine.cli import build_parser

    args, extra = build_parser().parse_known_args(
        ["submit", "compact", "--lake", "l", "--addr", "x", "--no", "--address", "http://h:8265"]
    )
    assert args.job == "compact" and args.address == "http://h:8265" and not args.no_wait
    assert extra == ["--lake", "l", "--addr", "x", "--no"]


class BusyHead:
    """A Jobs API client whose head answers "no agent" ``busy`` times, then accepts (or says
    the id is taken, as when a timed-out attempt did reach the agent: ``taken``).

    A fake: a real head refuses for a while only while its dashboard agent is still starting,
    a moment no test can time (one whose agent is down for good, e.g. another Ray holding its
    port, is what the ``head`` fixture above avoids). The messages are Ray 2.60's own
    (ray/dashboard/modules/job/job_head.py and job_manager.py, through
    JobSubmissionClient._raise_error)."""

    REFUSAL = (
        "Request failed with status code 500: No available agent to submit job, please try"
        " again later.."
    )

    def __init__(self, busy: int, error: Exception | None = None, taken: bool = False) -> None:
        self.busy, self.error, self.taken = busy, error, taken
        self.ids: list[str] = []

    def submit_job(self, entrypoint: str, runtime_env: dict[str, Any], submission_id: str) -> str:
        self.ids.append(submission_id)
        if self.error is not None:
            raise self.error
        if len(self.ids) <= self.busy:
            raise RuntimeError(self.REFUSAL)
        if self.taken:
            raise RuntimeError(
                "Request failed with status code 400: Traceback ... ValueError: Job with"
                f" submission_id {submission_id} already exists. Please use a different"
                " submission_id.."
            )
        return submission_id


def test_a_head_without_a_job_agent_yet_gets_the_same_job_again_until_it_takes_it() -> None:
    from engine.submit import submit_job

    waited: list[float] = []
    head = BusyHead(busy=3)
    job = submit_job(head, "python -m jobs.compact", {}, "thermocline-compact", sleep=waited.append)
    assert job == head.ids[-1] and job.startswith("thermocline-compact-")
    assert len(head.ids) == 4 and len(set(head.ids)) == 1  # one id: never two jobs
    assert waited == [1, 2, 4]
    # A refused attempt that reached the agent after all: the job is ours, submitted once.
    late = BusyHead(busy=1, taken=True)
    assert submit_job(late, "x", {}, "thermocline-compact", sleep=waited.append) == late.ids[0]
    assert len(late.ids) == 2 and len(set(late.ids)) == 1


def test_a_head_that_never_gets_an_agent_or_fails_otherwise_stops_the_submit() -> None:
    from engine.submit import NoJobAgent, submit_job

    waited: list[float] = []
    with pytest.raises(NoJobAgent, match="another Ray on that machine holds the agent's port"):
        submit_job(BusyHead(busy=99), "x", {}, waits_s=(1, 2, 4), sleep=waited.append)
    assert waited == [1, 2, 4]
    taken = BusyHead(busy=0, taken=True)  # on the first attempt: not ours, an error
    with pytest.raises(RuntimeError, match="already exists"):
        submit_job(taken, "x", {}, sleep=waited.append)
    other = BusyHead(busy=0, error=RuntimeError("Request failed with status code 400: bad"))
    with pytest.raises(RuntimeError, match="status code 400"):
        submit_job(other, "x", {}, sleep=waited.append)
    assert len(other.ids) == 1 and waited == [1, 2, 4]  # not retried
