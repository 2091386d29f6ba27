"""Run jobs on cron schedules, catching up what was missed: ``thermocline schedule FILE``.

A schedule file::

    lake: s3://bucket/lake            # where each job's watermark lives: _schedule/{name}.json
    storage_options: {}               # fsspec options of that lake (optional)
    jobs:
      - name: nightly-compact
        cron: "0 3 * * *"             # UTC, five fields (cronsim)
        job: compact                  # a module of jobs/ ...
        args: [--lake, s3://bucket/lake]
        address: http://head:8265     # optional: submit it to that cluster (Ray Jobs API)
        start: 2026-11-01T00:00:00Z   # optional: catch up from here on the first run
      - name: export
        cron: "0 * * * *"
        command: [python, export.py, --day, "{date}"]   # ... or any command

Each fire of a cron expression ends an *interval*, from the fire before it. A job's watermark
(in the lake) is the end of the last interval it finished. At each tick, every interval that
ended after the watermark and by now runs once, in order, with ``{start}``, ``{end}`` (ISO-8601,
UTC) and ``{date}`` (the interval's start date: yesterday, for a daily job) replaced in its
``args`` or ``command``; the watermark moves after each success, so after downtime every missed
interval runs once and in order, and a failed interval stops that job's catch-up until the next
tick retries it. Jobs are expected to replace their outputs (a re-run interval rewrites, never
doubles). Without ``start``, a job's first tick runs only the last finished interval. While a
job's intervals run, the scheduler holds its lease in the lake (``engine.lease``), so two
schedulers of one lake never run the same job at once.

``--once`` runs what is due and exits (for cron or a Kubernetes CronJob); without it the
scheduler sleeps until the next fire, until SIGINT or SIGTERM.

Example:
    >>> from datetime import datetime, timezone
    >>> t = lambda h: datetime(2026, 11, 27, h, tzinfo=timezone.utc)
    >>> [(s.hour, e.hour) for s, e in due_intervals("0 */2 * * *", t(2), t(9))]
    [(2, 4), (4, 6), (6, 8)]
    >>> fill(["--day", "{date}", "{start}/{end}"], t(0), t(6))
    ['--day', '2026-11-27', '2026-11-27T00:00:00+00:00/2026-11-27T06:00:00+00:00']
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.config import _describe
from engine.lake import Lake
from engine.lease import LeaseHeld, Leases
from routers import ConfigError
from routers.yamlfile import read_yaml

__all__ = ["Schedule", "ScheduledJob", "Scheduler", "due_intervals", "fill", "load_schedule"]

SCHEDULE_DIR: Final[str] = "_schedule"
#: How long a job's lease lasts (a scheduler that died frees its jobs after this), and what
#: must be left of it to start another interval (longer than an interval's run, or raise it).
_LEASE_S: Final[float] = 6 * 3600
_LEASE_MARGIN_S: Final[float] = 3600


class ScheduledJob(BaseModel):
    """One job of a schedule (see the module docs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    cron: str
    job: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    address: str | None = None
    start: datetime | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.now(timezone.utc))
        except CronSimError as error:
            raise ValueError(f"not a cron expression ({error}); e.g. '0 3 * * *'") from None
        return value

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-01T00:00:00Z")
        return None if value is None else value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduledJob:
        if (self.job is None) == (self.command is None):
            raise ValueError("give either job (a module of jobs/) or command, not both")
        if self.command is not None and (self.args or self.address):
            raise ValueError("args and address go with job; a command carries its own")
        if self.job is not None:
            from engine.submit import job_names

            if self.job not in job_names():
                raise ValueError(f"job {self.job!r}: not one of {', '.join(job_names())}")
        return self


class Schedule(BaseModel):
    """A schedule file: the lake of the watermarks, and the jobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lake: str
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    jobs: tuple[ScheduledJob, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Schedule:
        names = [j.name for j in self.jobs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"job names must differ: {', '.join(twice)} more than once")
        return self


def load_schedule(path: str | Path) -> Schedule:
    """Read and validate a schedule file.

    Raises:
        ConfigError: each problem by dotted path (``jobs[0].cron: ...``).
    """
    try:
        return Schedule.model_validate(read_yaml(path, "schedule"))
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None


def due_intervals(cron: str, after: datetime, now: datetime) -> list[tuple[datetime, datetime]]:
    """The intervals of ``cron`` that ended after ``after`` and by ``now``, in order: (the fire
    before, the fire) for each fire in ``(after, now]``."""
    from cronsim import CronSim

    # cronsim fires in the zone of the time it is given: the schedule's is UTC.
    after, now = after.astimezone(timezone.utc), now.astimezone(timezone.utc)
    fires = []
    for fire in CronSim(cron, after):
        if fire > now:
            break
        fires.append(fire)
    if not fires:
        return []
    first = next(CronSim(cron, fires[0], reverse=True))
    return list(zip([first, *fires[:-1]], fires, strict=True))


def fill(words: tuple[str, ...] | list[str], start: datetime, end: datetime) -> list[str]:
    """``words`` with ``{start}``, ``{end}`` and ``{date}`` replaced (other braces kept)."""
    values = {
        "{start}": start.isoformat(),
        "{end}": end.isoformat(),
        "{date}": start.date().isoformat(),
    }
    out = []
    for word in words:
        for token, value in values.items():
            word = word.replace(token, value)
        out.append(word)
    return out


class Scheduler:
    """Runs a schedule's due intervals (:meth:`tick`), or keeps doing so (:meth:`run`).

    Args:
        schedule: the jobs and their lake.
        clock: now, as a timezone-aware datetime (tests and backfills pass their own).
        log: where progress lines go.
    """

    def __init__(
        self,
        schedule: Schedule,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.schedule = schedule
        self.clock = clock
        self.log = log
        self.lake = Lake(schedule.lake, schedule.storage_options)
        self.leases = Leases(self.lake)
        self.stopping = threading.Event()

    def watermark(self, job: ScheduledJob) -> datetime | None:
        """The end of the last interval ``job`` finished (None: it never ran)."""
        text = self.lake.read_text(f"{SCHEDULE_DIR}/{job.name}.json")
        return None if text is None else datetime.fromisoformat(json.loads(text)["done_until"])

    def tick(self) -> list[dict[str, Any]]:
        """Run every due interval of every job, in order per job; one record per interval run."""
        ran: list[dict[str, Any]] = []
        for job in self.schedule.jobs:
            if self.stopping.is_set():
                break
            ran += self._catch_up(job)
        return ran

    def _catch_up(self, job: ScheduledJob) -> list[dict[str, Any]]:
        try:
            lease = self.leases.acquire(f"schedule/{job.name}", _LEASE_S, owner="scheduler")
        except LeaseHeld as held:
            self.log(f"schedule: {job.name}: skipped: {held}")
            return []
        ran = []
        try:
            now = self.clock()
            mark = self.watermark(job) or job.start
            if mark is None:  # first run without a start: the last finished interval only
                intervals = due_intervals(job.cron, _two_fires_back(job.cron, now), now)[-1:]
            else:
                intervals = due_intervals(job.cron, mark, now)
            for start, end in intervals:
                if self.stopping.is_set():
                    break
                if lease.remaining() < _LEASE_MARGIN_S:  # another scheduler may take it soon
                    self.log(f"schedule: {job.name}: lease running out; the rest next tick")
                    break
                record = self._run(job, start, end)
                ran.append(record)
                if record["status"] != "ok":
                    break  # retried at the next tick; later intervals wait for it
                stored = self.watermark(job)
                if stored is None or end > stored:  # never backwards
                    self.lake.write_text(
                        json.dumps({"done_until": end.isoformat(), "at": self.clock().isoformat()}),
                        f"{SCHEDULE_DIR}/{job.name}.json",
                    )
        finally:
            self.leases.release(lease)
        return ran

    def _run(self, job: ScheduledJob, start: datetime, end: datetime) -> dict[str, Any]:
        began = time.monotonic()
        try:
            code = self._execute(job, start, end)
            status = "ok" if code == 0 else f"exit {code}"
        except Exception as error:  # a missing command, an unreachable cluster: this job only
            status = f"error: {type(error).__name__}: {' '.join(str(error).split())}"
        seconds = round(time.monotonic() - began, 3)
        span = f"[{start.isoformat()}, {end.isoformat()})"
        self.log(f"schedule: {job.name} {span}: {status} in {seconds:g} s")
        return {"name": job.name, "start": start.isoformat(), "end": end.isoformat(),
                "status": status, "seconds": seconds}  # fmt: skip

    def _execute(self, job: ScheduledJob, start: datetime, end: datetime) -> int:
        if job.command is not None:
            return subprocess.run(fill(job.command, start, end), check=False).returncode
        assert job.job is not None  # checked at load
        args = fill(job.args, start, end)
        if job.address is None:
            command = [sys.executable, "-m", f"jobs.{job.job}", *args]
            return subprocess.run(command, check=False).returncode
        from engine.submit import JobFailed, submit

        try:
            submit(job.job, args, job.address)
        except JobFailed as failed:
            return failed.exit_code or 1
        return 0

    def run(self) -> None:
        """Tick at every fire until SIGINT or SIGTERM (checked between intervals)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        while not self.stopping.is_set():
            self.tick()
            self.stopping.wait(max(1.0, min(self._until_next_fire(), 60.0)))

    def _until_next_fire(self) -> float:
        from cronsim import CronSim

        now = self.clock()
        return min((next(CronSim(j.cron, now)) - now).total_seconds() for j in self.schedule.jobs)


def _two_fires_back(cron: str, now: datetime) -> datetime:
    """The fire before the last fire before ``now``: the intervals after it hold the last
    finished one (a fire exactly at ``now`` included)."""
    from cronsim import CronSim

    fires: Iterator[datetime] = CronSim(cron, now.astimezone(timezone.utc), reverse=True)
    next(fires)
    return next(fires)
