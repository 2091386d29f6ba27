"""Submit a job of ``jobs/`` to a Ray cluster through the Ray Jobs API, and follow it.

``thermocline submit compact --lake s3://bucket/lake --address http://HEAD:8265`` uploads the
project as the job's ``working_dir`` (so ``jobs``, ``engine`` and ``routers`` import on every
node), runs ``python -m jobs.compact --lake s3://bucket/lake`` as the job's driver on the head,
streams its logs here, and exits with the job's own exit code. Ctrl-C stops the job.

Ray 2.60 turns token authentication on by default: a client sends the cluster's token only when
``RAY_AUTH_MODE=token`` is set, so this sets it whenever a token is at hand (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, the file a cluster started here writes).

Example:
    >>> entrypoint("compact", ["--lake", "s3://bucket/my lake"])
    "python -m jobs.compact --lake 's3://bucket/my lake'"
    >>> job_names()[:1]
    ['compact']
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Final

from routers.errors import ThermoclineError

__all__ = [
    "DEFAULT_ADDRESS",
    "JobFailed",
    "NoJobAgent",
    "entrypoint",
    "job_names",
    "submit",
    "submit_job",
]

#: The Jobs API of a head on this machine (the dashboard's port).
DEFAULT_ADDRESS: Final[str] = "http://127.0.0.1:8265"
ROOT: Final[Path] = Path(__file__).resolve().parents[1]
#: Waits between submissions a head refused for want of a job agent (see :func:`submit_job`).
_BUSY_WAITS_S: Final[tuple[float, ...]] = (1, 2, 4, 8, 15, 30)
#: What Ray's job head answers when no agent took the job within its own 10 s wait: the head
#: is up, its node's dashboard agent is not (still starting, or down: see :class:`NoJobAgent`).
_NO_AGENT: Final[str] = "No available agent to submit job"


class JobFailed(ThermoclineError):
    """The job ended in another state than SUCCEEDED."""

    def __init__(self, job: str, status: str, message: str, code: int) -> None:
        super().__init__(f"job {job} {status}: {message}")
        self.exit_code = code


class NoJobAgent(ThermoclineError, RuntimeError):
    """The Ray head kept answering that no job agent could take the job."""

    retriable = True


def job_names(root: Path = ROOT) -> list[str]:
    """The jobs there are: the modules of ``jobs/``."""
    return sorted(p.stem for p in (root / "jobs").glob("*.py") if not p.stem.startswith("_"))


def entrypoint(job: str, args: Sequence[str]) -> str:
    """The job's driver command, quoted for the shell Ray runs it with."""
    return " ".join(["python", "-m", f"jobs.{job}", *(shlex.quote(a) for a in args)])


def use_token_if_present(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``RAY_AUTH_MODE=token`` when a token is at hand and no mode was chosen."""
    if "RAY_AUTH_MODE" in environ:
        return
    home_token = Path(environ.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    if environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH") or home_token.exists():
        environ["RAY_AUTH_MODE"] = "token"


def submit(
    job: str,
    args: Sequence[str],
    address: str = DEFAULT_ADDRESS,
    wait: bool = True,
    env_vars: Mapping[str, str] | None = None,
) -> str:
    """Submit ``jobs.<job>`` with ``args``; with ``wait``, stream its logs to stdout and return
    when it ends.

    Returns:
        The submission id.

    Raises:
        ValueError: no such job.
        JobFailed: the job failed or was stopped (``exit_code``: the job's, when Ray says it).
    """
    if job not in job_names():
        raise ValueError(f"no job {job!r}; the jobs are: {', '.join(job_names())}")
    use_token_if_present()
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    # What is uploaded: the project without what .gitignore and .rayignore leave out (the
    # venv, caches, lakes, .git), as `ray job submit --working-dir .` does it.
    runtime_env: dict[str, Any] = {"working_dir": str(ROOT)}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    submission = submit_job(client, entrypoint(job, args), runtime_env, f"thermocline-{job}")
    print(f"submitted {submission} to {address}: jobs.{job}", file=sys.stderr, flush=True)
    if not wait:
        return submission
    try:
        asyncio.run(_follow(client, submission))
    except KeyboardInterrupt:
        client.stop_job(submission)
        raise
    info = client.get_job_info(submission)
    if info.status != JobStatus.SUCCEEDED:
        message = " ".join(str(info.message or "").split())
        found = re.search(r"exit code (\d+)", message)
        raise JobFailed(submission, str(info.status), message, int(found[1]) if found else 1)
    return submission


def submit_job(
    client: Any,
    command: str,
    runtime_env: Mapping[str, Any],
    prefix: str = "thermocline",
    waits_s: Sequence[float] = _BUSY_WAITS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """``client.submit_job`` under one submission id, again after each of ``waits_s`` while the
    head answers that no job agent is available (Ray asks the caller to try again later: its
    node's agent may still be starting). One id for every attempt, so a job never starts twice:
    should an attempt the head timed out have reached the agent after all, the next one is
    refused as a duplicate of our own id, which means the job was submitted. Other errors are
    raised at once.

    Returns:
        The submission id.

    Raises:
        NoJobAgent: the head refused every attempt for want of an agent.

    Example:
        >>> class Head:  # answers the second attempt
        ...     calls = 0
        ...     def submit_job(self, **kwargs):
        ...         self.calls += 1
        ...         if self.calls == 1:
        ...             raise RuntimeError("No available agent to submit job, try again later.")
        ...         return kwargs["submission_id"]
        >>> submit_job(Head(), "python -m jobs.compact", {}, "doc", sleep=lambda s: None)[:4]
        'doc-'
    """
    submission_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    for attempt, wait in enumerate((*waits_s, None)):
        try:
            job = client.submit_job(
                entrypoint=command, runtime_env=dict(runtime_env), submission_id=submission_id
            )
            return str(job)
        except RuntimeError as exc:
            if attempt and f"submission_id {submission_id} already exists" in str(exc):
                return submission_id  # our earlier attempt did reach the agent
            if _NO_AGENT not in str(exc):
                raise
            if wait is None:
                took = time.monotonic() - started
                raise NoJobAgent(
                    f"the Ray head had no job agent to take the job for {took:.0f} s:"
                    " its dashboard agent is down, often because another Ray on that machine"
                    " holds the agent's port (ray start --dashboard-agent-listen-port, default"
                    " 52365; its logs: dashboard_agent.log)"
                ) from exc
            print(
                f"the Ray head has no job agent yet: trying again in {wait:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            sleep(wait)
    raise AssertionError("unreachable")


async def _follow(client: Any, submission: str) -> None:
    async for lines in client.tail_job_logs(submission):
        sys.stdout.write(lines)
        sys.stdout.flush()
