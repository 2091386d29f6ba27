"""The ``thermocline`` command.

- ``thermocline validate POLICY.yaml``: check a routing policy; print its compiled rules (exit 0)
  or every problem found (exit 1).
- ``thermocline run [--config FILE] [--events N] [--rate R] [--lake URI] [--json]``: run a
  pipeline on a local Ray, with live progress per path on stderr and a summary at the end; with
  ``--json`` the last line on stdout is the summary as one JSON object. ``--source kafka
  --bootstrap HOST:PORT --topic T [--group G]`` consumes Kafka instead.

What cannot work is refused before Ray starts, in one line naming the setting, the value and
what to do (:mod:`engine.preflight`): exit status 2 for configuration, 1 for the environment or
a failure while running; a traceback only with ``--debug``. Ctrl-C or SIGTERM stop a run at any
moment: while it starts, at once; while it runs, after the current block (a last checkpoint
taken, the summary printed, exit status 128 + the signal); a second one stops it at once. Every
Ray process the run started is gone when the command returns.

Ray is imported only by the commands that run pipelines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from routers import ConfigError, Policy, PolicyError, parse_duration_ms

__all__ = ["DEMO_CONFIG", "main"]

#: What ``thermocline run`` runs without ``--config``: the game-telemetry demo of the project.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def _validate(args: argparse.Namespace) -> int:
    """Check a policy or a whole pipeline config (which one: its top-level keys, or --pipeline)."""
    from routers.yamlfile import YamlFileError, read_yaml

    try:
        data = read_yaml(args.file, "policy or pipeline config")
    except YamlFileError as exc:
        print(f"thermocline: {exc}", file=sys.stderr)
        return 1
    from engine.config import PIPELINE_KEYS

    pipeline = args.pipeline or (isinstance(data, dict) and bool(PIPELINE_KEYS & set(data)))
    if pipeline:
        from engine.config import load_config
        from engine.preflight import StartupError, check_processors

        try:
            config = load_config(args.file)
            check_processors(config)
        except ConfigError as exc:
            return _problems(f"{args.file}: invalid pipeline config", exc.problems)
        except StartupError as exc:
            return _problems(f"{args.file}: invalid pipeline config", [str(exc)])
        print(f"{args.file}: a valid pipeline config")
        print(
            f"source: {config.source.kind}; hot: {config.hot.actors} actors of"
            f" {config.hot.processor}; warm: {config.warm.processor} every"
            f" {config.warm.max_delay} or {config.warm.max_batch_rows:,} rows; cold: lake"
            f" {config.cold.lake_uri}"
        )
        print(config.policy.describe())
        return 0
    try:
        policy = Policy.from_dict(data)
    except PolicyError as exc:
        return _problems(f"{args.file}: invalid policy", exc.problems)
    print(policy.describe())
    return 0


def _problems(title: str, problems: Sequence[str]) -> int:
    print(title, file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


class _ProgressPrinter:
    """One line per progress report: rows/s since the last line per path, queues, in-flight."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] = (0.0, {"in": 0, "hot": 0, "warm": 0, "cold": 0})

    def __call__(self, p: Any) -> None:
        now = {"in": p.events_in, **p.routed}
        then, before = self._last
        span = max(p.elapsed_s - then, 1e-9)
        rate = {k: (now[k] - before[k]) / span for k in now}
        self._last = (p.elapsed_s, now)
        print(
            f"[{p.elapsed_s:6.1f}s] in {now['in']:>10,} {rate['in']:>9,.0f}/s | "
            f"hot {rate['hot']:>8,.0f}/s calls={p.hot_calls_in_flight} | "
            f"warm {rate['warm']:>8,.0f}/s queued={p.warm_buffered_rows:,} "
            f"tasks={p.warm_tasks_in_flight} | "
            f"cold {rate['cold']:>8,.0f}/s writes={p.cold_calls_in_flight} | "
            f"dead {p.dead_letter:,}",
            file=sys.stderr,
            flush=True,
        )


class _Signals:
    """SIGINT and SIGTERM: during start-up, stop at once, except inside ``ray.init``; during a
    run, stop after the current block (graceful); a second signal stops at once. "At once"
    raises ``KeyboardInterrupt`` in the main thread, which unwinds through the pipeline's and
    Ray's clean-up.

    Inside ``ray.init`` the first signal is held until it returns: interrupted while the raylet
    starts its dashboard and runtime-env agents, ``ray.init`` has not yet recorded them, and
    ``ray.shutdown()`` left them running for 30-40 s (seen on every SIGTERM 1.8-3 s after launch).
    """

    def __init__(self) -> None:
        self.source: Any = None  # set once the pipeline runs
        self.received: int | None = None
        #: Set once the run's work is done: a signal then only ends the wait for the summary.
        self.finishing = False
        #: Set while ``ray.init`` runs: the first signal is held until it returns.
        self.holding = False
        self.arm()

    @contextlib.contextmanager
    def holding_for_ray(self) -> Iterator[None]:
        """Hold the first signal during the block (``ray.init``); stop once it is over.

        ``ray.init`` sets a SIGTERM handler of its own (``sys.exit``, the same interruption):
        it is kept out for the duration, so SIGTERM is held like SIGINT.

        Raises:
            KeyboardInterrupt: after the block, when a signal came during it.
        """
        import ray._private.utils as ray_utils

        own = getattr(ray_utils, "set_sigterm_handler", None)  # private: Ray is pinned
        if own is not None:
            ray_utils.set_sigterm_handler = lambda handler: None
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if own is not None:
                ray_utils.set_sigterm_handler = own
            self.arm()
        if self.received is not None:
            raise KeyboardInterrupt

    def arm(self) -> None:
        """(Re)install the handlers: ``ray.init`` installs its own for SIGTERM (an exit)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        first = self.received is None
        self.received = signum
        if self.finishing:  # everything is written; Ray is shutting down: let it
            return
        if first and self.holding:
            print(
                f"{signal.Signals(signum).name}: stopping once Ray has started, in seconds"
                " (again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        if first and self.source is not None:
            print(
                f"{signal.Signals(signum).name}: stopping after the current block"
                " (again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            self.source.stop()
            return
        raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    import os
    import time

    from engine.cluster import resolve_address
    from engine.config import load_config
    from engine.preflight import check_lake, check_processors, check_resources, check_source

    launched = time.monotonic()
    signals = _Signals()
    overrides: dict[str, Any] = {}
    if args.events is not None:
        overrides["source.events"] = args.events
    if args.rate is not None:
        overrides["source.rate"] = args.rate
    if args.lake is not None:
        overrides["cold.lake_uri"] = args.lake
    if args.source is not None:
        overrides["source.kind"] = args.source
    if args.bootstrap is not None:
        overrides["source.bootstrap"] = args.bootstrap
    if args.topic:
        overrides["source.topics"] = args.topic
    if args.group is not None:
        overrides["source.group"] = args.group
    if args.name is not None:
        overrides["name"] = args.name
    if args.path is not None:
        overrides["source.path"] = args.path
    if args.policy is not None:
        overrides["policy"] = Path(args.policy)
    if args.quiet:
        overrides["progress_every_s"] = 0
    # No config: the demo pipeline (every path in use), not an empty policy sending all warm.
    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.exists() else None)
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"{path or '<defaults>'}: invalid config", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    _refuse_misplaced_flags(args, config.source.kind)
    cpus = args.num_cpus or os.cpu_count() or 2
    address = resolve_address(args.address)
    # Before Ray starts: what can never work fails now, in one line (engine.preflight). A
    # cluster's resources are its own (the autoscaler may add nodes): the paths' placement
    # timeout names what it lacks.
    if address is None:
        check_resources(config, cpus)
    check_processors(config)
    check_source(config)
    check_lake(config)

    import ray

    from engine.cluster import connect
    from engine.pipeline import Pipeline, source_from_config
    from engine.sources import FileSource

    source = source_from_config(config)
    if isinstance(source, FileSource):
        print(f"file source: {len(source.files()):,} files in {source.path}", file=sys.stderr)
    if not args.quiet:
        where = (
            f"joining the Ray cluster at {address}"
            if address
            else f"starting a local Ray ({cpus:g} CPUs)"
        )
        print(where, file=sys.stderr, flush=True)
    try:
        ray_started = time.monotonic()
        with signals.holding_for_ray():
            connect(address, cpus, verbose=args.verbose)
        ray_s = time.monotonic() - ray_started
        pipeline = Pipeline(config, source=source)
        signals.source = pipeline.source
        summary = pipeline.run(progress=None if args.quiet else _ProgressPrinter())
    finally:
        signals.finishing = True
        ray.shutdown()  # every Ray process this run started (from a cluster: disconnects)
    result = summary.to_json()
    total = summary.hot + summary.warm + summary.cold + summary.dead_letter
    stopped = ""
    synthetic = config.source.kind == "synthetic"
    # A stop that came once every event was read did not cut the run short.
    cut_short = summary.stopped and not (synthetic and summary.events_in >= config.source.events)
    if cut_short:
        planned = f" of {config.source.events:,}" if synthetic else ""
        name = signal.Signals(signals.received).name if signals.received else "a stop request"
        stopped = f"stopped by {name} after {summary.events_in:,}{planned} events\n"
    print(
        f"\n{stopped}events in     {summary.events_in:>12,}  ({summary.events_per_s:,.0f} events/s"
        f" over {summary.elapsed_s:.1f} s of processing; {time.monotonic() - launched:.1f} s in"
        f" all, of which {ray_s:.1f} s starting Ray)\n"
        f"  hot         {summary.hot:>12,}  p50 {summary.hot_latency_ms['p50_ms']} ms, "
        f"p99 {summary.hot_latency_ms['p99_ms']} ms (from when each event was due, or read), "
        f"alerts {summary.alerts:,}\n"
        f"  warm        {summary.warm:>12,}\n"
        f"  cold        {summary.cold:>12,}\n"
        f"  dead letter {summary.dead_letter:>12,}\n"
        + (
            f"  type mismatches by rule: {summary.type_mismatches}\n"
            if summary.type_mismatches
            else ""
        )
        + f"  accounted   {total:>12,}  {'ok' if total == summary.events_in else 'MISMATCH'}\n"
        + (
            f"checkpoints {summary.checkpoints:>12,}  (last {summary.checkpoint['last_ms']} ms,"
            f" max {summary.checkpoint['max_ms']} ms; largest snapshot"
            f" {summary.checkpoint['snapshot_rows']:,} keys,"
            f" {summary.checkpoint['snapshot_bytes'] / 1e6:.1f} MB;"
            f" snapshot step at most {summary.checkpoint['snapshot_max_ms']} ms)\n"
            if summary.checkpoints
            else ""
        )
        + "per rule:\n"
        + "".join(f"  {name:<16}{count:>12,}\n" for name, count in summary.per_rule.items())
        + "outputs:\n"
        + "".join(f"  {name:<16}{path}\n" for name, path in summary.outputs.items()),
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(result))
    if total != summary.events_in:
        return 1
    # A bounded source cut short says so in its status; a stream (Kafka) has no other way to
    # end than a signal, and a graceful stop after a last checkpoint is its normal end.
    if cut_short and signals.received and config.source.kind != "kafka":
        return 128 + signals.received
    return 0


#: Flags that belong to one source kind, and that kind.
_SOURCE_FLAGS = {
    "events": "synthetic", "rate": "synthetic", "path": "file",
    "bootstrap": "kafka", "topic": "kafka", "group": "kafka",
}  # fmt: skip


def _refuse_misplaced_flags(args: argparse.Namespace, kind: str) -> None:
    """A flag of another source kind would be ignored: refuse it instead."""
    from engine.preflight import StartupError

    for flag, owner in _SOURCE_FLAGS.items():
        if getattr(args, flag) is not None and owner != kind:
            raise StartupError(
                f"--{flag}: applies to a {owner} source, and this run reads a {kind} source;"
                f" drop --{flag}, or add --source {owner}"
            )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``thermocline`` command."""
    parser = argparse.ArgumentParser(
        prog="thermocline",
        description="Thermocline routes every event of a stream as hot (keyed Ray actors, in"
        " milliseconds), warm (micro-batches) or cold (a lake), each path scaling on its own.",
        epilog="Start with `thermocline run` (the demo: synthetic game telemetry, a lake in"
        " ./lake). `thermocline COMMAND --help` lists a command's flags and defaults.",
    )
    parser.add_argument("--version", action="version", version=f"thermocline {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, print its traceback (default: one line)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser(
        "validate",
        help="check a routing policy or a whole pipeline config, print what it does",
        description="Check a routing policy or a whole pipeline config (told apart by their"
        " top-level keys) and print its compiled rules, or every problem found (exit 1).",
    )
    validate.add_argument("file", help="the policy or pipeline config YAML")
    validate.add_argument(
        "--pipeline", action="store_true", help="read FILE as a pipeline config (default: detect)"
    )
    validate.set_defaults(handler=_validate)
    run = commands.add_parser(
        "run",
        help="run a pipeline on a local Ray, print progress and a summary",
        description="Run a pipeline on a local Ray (127.0.0.1): progress per path on stderr, a"
        " summary at the end. Flags override the config. Ctrl-C or SIGTERM: stop after the"
        " current block; twice: at once.",
    )
    run.add_argument("--config", help="pipeline YAML (default: examples/demo.yaml, the demo)")
    run.add_argument("--policy", help="a policy YAML to route with (default: the config's policy)")
    run.add_argument(
        "--source",
        choices=["synthetic", "file", "kafka"],
        help="source kind (default: the config's)",
    )
    run.add_argument(
        "--events", type=_positive_int, help="synthetic: how many events (default: config)"
    )
    run.add_argument(
        "--rate", type=float, help="synthetic: events per second (default: as fast as it goes)"
    )
    run.add_argument("--path", help="file: an NDJSON or Parquet file, or a folder of them")
    run.add_argument("--bootstrap", help="kafka: bootstrap servers, HOST:PORT (default: config)")
    run.add_argument("--topic", action="append", help="kafka: a topic to consume, repeatable")
    run.add_argument("--group", help="kafka: consumer group id (default: config)")
    run.add_argument(
        "--name",
        help="the pipeline's name: scopes its checkpoints and lake files; required with kafka"
        " (default: config, else the source's kind)",
    )
    run.add_argument("--lake", help="lake URI, a folder or an fsspec URL (default: config, ./lake)")
    run.add_argument(
        "--num-cpus",
        type=_positive_int,
        help="CPUs of the local Ray (default: all of the machine's)",
    )
    run.add_argument(
        "--address",
        help="join this Ray cluster (HOST:6379, auto) instead of starting a local Ray"
        " (default: RAY_ADDRESS, if set)",
    )
    run.add_argument(
        "--json", action="store_true", help="print the summary as JSON, last on stdout"
    )
    noise = run.add_mutually_exclusive_group()
    noise.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines, only the summary"
    )
    noise.add_argument("-v", "--verbose", action="store_true", help="Ray's own log messages too")
    run.set_defaults(handler=_run)
    submit = commands.add_parser(
        "submit",
        # No abbreviations: a job's own --addr... or --no... must reach the job.
        allow_abbrev=False,
        help="run a job of jobs/ on a Ray cluster (Ray Jobs API), following its logs",
        description="Submit `python -m jobs.JOB ARGS` to a Ray cluster through the Ray Jobs API"
        " with the project as its working_dir, stream its logs and exit with its exit code."
        " Arguments the submit command does not know are the job's, e.g. `thermocline submit"
        " compact --lake s3://bucket/lake --address http://HEAD:8265`.",
    )
    submit.add_argument("job", help="the job: a module of jobs/ (compact, ...)")
    submit.add_argument(
        "--address",
        help="the cluster's Jobs API, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, an"
        " http RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="print the submission id and return at once"
    )
    submit.set_defaults(handler=_submit)
    schedule = commands.add_parser(
        "schedule",
        help="run jobs on cron schedules, catching up missed intervals in order",
        description="Run the jobs of a schedule file on their cron expressions (UTC). Each"
        " job's watermark in the lake records the last interval done; every interval missed"
        " since runs once, in order, with {start}, {end} and {date} in its arguments. See"
        " engine/schedule.py for the file's format.",
    )
    schedule.add_argument("file", help="the schedule YAML")
    schedule.add_argument(
        "--once", action="store_true", help="run what is due, print a JSON summary and exit"
    )
    schedule.add_argument("--now", help="the time to run as of (ISO-8601 with a zone): backfills")
    schedule.set_defaults(handler=_schedule)
    query = commands.add_parser(
        "query",
        help="the serving view: players' batch features merged with their live hot state",
        description="Print, per player id, the serving view: the batch view (jobs.daily_features'"
        " latest day, or --day) merged with the speed view (the hot path's state as of the"
        " pipeline's last checkpoint, for the days after the batch day), when the hot processor"
        " is day_features; with another, or with --side-by-side, the two views side by side"
        " (speed columns prefixed live_). See engine/serving.py.",
    )
    query.add_argument("keys", nargs="+", metavar="KEY", help="player ids")
    query.add_argument("--config", help="the pipeline YAML (default: the demo)")
    query.add_argument("--lake", help="lake URI (default: the config's)")
    query.add_argument("--day", help="the batch view's day, YYYY-MM-DD (default: the latest)")
    query.add_argument("--json", action="store_true", help="one JSON object per line")
    query.add_argument(
        "--side-by-side", action="store_true", help="the two views apart, not merged"
    )
    query.set_defaults(handler=_query)
    serve = commands.add_parser(
        "serve",
        help="the HTTP ingestion service: game clients post events, get pushed updates",
        description="Serve POST /v1/events (JSON array or NDJSON, gzip optional): each event is"
        " decoded and routed by the config's policy and produced to Kafka, one topic per"
        " temperature (serve.topics), keyed by player; GET /v1/stream/PLAYER pushes the hot"
        " path's output rows (WebSocket or SSE); /healthz, /readyz, /metrics. API keys come"
        " from THERMOCLINE_API_KEYS (comma-separated). See docs/serve.md.",
    )
    serve.add_argument("--config", help="pipeline YAML with a serve section (default: the demo)")
    serve.add_argument("--bootstrap", help="Kafka HOST:PORT (default: serve.bootstrap)")
    serve.add_argument("--host", help="interface to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port, 8080; 0: any free)")
    serve.set_defaults(handler=_serve)
    vacuum = commands.add_parser(
        "vacuum",
        help="remove lake files no table version references, once past a retention",
        description="Remove data files of the lake's Delta tables that no version references:"
        " files staged by a run that crashed before committing them, files a compaction"
        " replaced. Only files older than --retention go: keep it longer than any pipeline's"
        " time between writing a file and committing it, and than a crashed pipeline may stay"
        " down (its recovery commits the files its last prepare record names).",
    )
    vacuum.add_argument("--config", help="pipeline YAML whose lake to clean (default: the demo)")
    vacuum.add_argument("--lake", help="lake URI (default: the config's)")
    vacuum.add_argument("--retention", default="168h", help="minimum age (default: 168h)")
    vacuum.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    vacuum.set_defaults(handler=_vacuum)
    return parser


def _submit(args: argparse.Namespace) -> int:
    import os

    from engine.submit import DEFAULT_ADDRESS, JobFailed, submit

    environ_http = os.environ.get("RAY_ADDRESS", "")
    address = (
        args.address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or (environ_http if environ_http.startswith("http") else DEFAULT_ADDRESS)
    )
    try:
        submit(args.job, args.job_args, address, wait=not args.no_wait)
    except ValueError as exc:
        print(f"thermocline: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"thermocline: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _schedule(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from engine.schedule import Scheduler, load_schedule

    try:
        schedule = load_schedule(args.file)
        now = datetime.fromisoformat(args.now) if args.now else None
    except (ConfigError, ValueError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [f"--now: {exc}"]
        _problems(f"{args.file}: invalid schedule", problems)
        return 2
    if now is not None and now.tzinfo is None:
        _problems(f"{args.file}: invalid schedule", ["--now: needs a time zone, e.g. ...Z"])
        return 2
    scheduler = Scheduler(schedule) if now is None else Scheduler(schedule, clock=lambda: now)
    if not args.once:
        scheduler.run()
        return 0
    ran = scheduler.tick()
    print(json.dumps({"schedule": str(args.file), "ran": ran}))
    return 1 if any(r["status"] != "ok" for r in ran) else 0


def _serve(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.serve import serve

    overrides = {
        f"serve.{name}": value
        for name in ("bootstrap", "host", "port")
        if (value := getattr(args, name)) is not None
    }
    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.exists() else None)
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        _problems(f"{path or '<defaults>'}: invalid config", exc.problems)
        return 2
    serve(config)
    return 0


def _query(args: argparse.Namespace) -> int:
    import json
    from datetime import date

    from engine.config import load_config
    from engine.serving import ServingView

    overrides = {"cold.lake_uri": args.lake} if args.lake else {}
    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.exists() else None)
    try:
        config = load_config(path, overrides)
        day = date.fromisoformat(args.day).isoformat() if args.day else None
    except (ConfigError, ValueError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [f"--day: {exc}"]
        _problems(f"{path or '<defaults>'}: invalid config", problems)
        return 2
    view = ServingView(config)
    views = view.read(day)  # once, for the rows and the line saying where they are from
    merge = not args.side_by_side and config.hot.processor == "day_features"
    rows = view.merged(args.keys, views=views) if merge else view.players(args.keys, views=views)
    print(
        f"query: {'merged' if merge else 'side by side'}; batch view"
        f" {views.batch_day or 'none yet'}; speed view from"
        f" {views.speed_from['from'] or 'nothing yet'}",
        file=sys.stderr,
    )
    for row in rows.to_pylist():  # a few players
        if args.json:
            print(json.dumps(row, default=str))
            continue
        print(f"{config.policy.schema.key} {row.pop(config.policy.schema.key)}")
        width = max(map(len, row), default=0)
        for name, value in row.items():
            print(f"  {name:<{width}}  {value}")
    return 0


def _vacuum(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.delta import LakeTables
    from engine.lake import Lake

    overrides = {"cold.lake_uri": args.lake} if args.lake else {}
    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.exists() else None)
    try:
        config = load_config(path, overrides)
        hours = parse_duration_ms(args.retention) / 3_600_000
    except (ConfigError, ValueError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [f"--retention: {exc}"]
        _problems(f"{path or '<defaults>'}: invalid config", problems)
        return 2
    if hours < 1:
        print(
            f"thermocline: --retention {args.retention} would delete files a running pipeline"
            " is about to commit; use 1h or more (default 168h)",
            file=sys.stderr,
        )
        return 2
    cold = config.cold
    tables = LakeTables(Lake(cold.lake_uri, dict(cold.storage_options)), config.name or "")
    total = 0
    for table in tables.tables():
        removed = tables.vacuum(table, int(hours), dry_run=args.dry_run)
        total += len(removed)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{table}: {verb} {len(removed):,} files", file=sys.stderr)
    print(
        f"vacuum: {total:,} files {'to remove' if args.dry_run else 'removed'} from"
        f" {cold.lake_uri} (older than {args.retention}, in no table version)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermocline`` console script."""
    from engine.preflight import StartupError
    from routers import ThermoclineError

    parser = build_parser()
    # A submitted job's own arguments (thermocline submit JOB [ARGS] --address URL) are the
    # ones the submit command does not know; any other command refuses them.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.job_args = extra
    try:
        return int(args.handler(args))
    except StartupError as exc:
        if args.debug:
            raise
        print(f"thermocline: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("thermocline: stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for a newcomer; --debug shows where
        if args.debug:
            raise
        kind = "" if isinstance(exc, ThermoclineError) else f"{type(exc).__name__}: "
        message = " ".join(str(exc).split())
        print(f"thermocline: {kind}{message} (--debug for the traceback)", file=sys.stderr)
        return 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thermocline")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
