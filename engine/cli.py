"""The ``thermocline`` command.

- ``thermocline validate POLICY.yaml``: check a routing policy; print its compiled rules (exit 0)
  or every problem found (exit 1).
- ``thermocline run [--config FILE] [--events N] [--rate R] [--lake URI] [--json]``: run a
  pipeline on a local Ray, with live progress per path on stderr and a summary at the end; with
  ``--json`` the last line on stdout is the summary as one JSON object. ``--source kafka
  --bootstrap HOST:PORT --topic T [--group G]`` consumes Kafka instead. SIGTERM or Ctrl-C stop
  it cleanly: the current block is finished, a last checkpoint taken, the summary printed.

Ray is imported only by the commands that run pipelines.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routers import ConfigError, Policy, PolicyError

__all__ = ["DEMO_CONFIG", "main"]

#: What ``thermocline run`` runs without ``--config``: the game-telemetry demo of the project.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def _validate(args: argparse.Namespace) -> int:
    try:
        policy = Policy.from_yaml(args.policy)
    except PolicyError as exc:
        print(f"{args.policy}: invalid policy", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(policy.describe())
    return 0


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


def _run(args: argparse.Namespace) -> int:
    import time

    from engine.config import load_config

    launched = time.monotonic()
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
    # No config: the demo pipeline (every path in use), not an empty policy sending all warm.
    path = args.config or (DEMO_CONFIG if DEMO_CONFIG.exists() else None)
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"{args.config or '<defaults>'}: invalid config", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    from engine.pipeline import Pipeline, init_local_ray

    init_local_ray(args.num_cpus)
    pipeline = Pipeline(config)

    def stop(signum: int, frame: object) -> None:
        # Graceful stop: the source ends after its current block; the run drains, takes its
        # final checkpoint (commits) and prints the summary as usual.
        print(f"signal {signum}: stopping after the current block", file=sys.stderr, flush=True)
        pipeline.source.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    summary = pipeline.run(progress=_ProgressPrinter())
    result = summary.to_json()
    total = summary.hot + summary.warm + summary.cold + summary.dead_letter
    print(
        f"\nevents in     {summary.events_in:>12,}  ({summary.events_per_s:,.0f} events/s over "
        f"{summary.elapsed_s:.1f} s of processing; {time.monotonic() - launched:.1f} s in all, "
        "Ray start-up included)\n"
        f"  hot         {summary.hot:>12,}  p50 {summary.hot_latency_ms['p50_ms']} ms, "
        f"p99 {summary.hot_latency_ms['p99_ms']} ms (from when each block was due, or read), "
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
        "per rule:\n"
        + "".join(f"  {name:<16}{count:>12,}\n" for name, count in summary.per_rule.items())
        + "outputs:\n"
        + "".join(f"  {name:<16}{path}\n" for name, path in summary.outputs.items()),
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(result))
    return 0 if total == summary.events_in else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``thermocline`` command."""
    parser = argparse.ArgumentParser(prog="thermocline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a routing policy file")
    validate.add_argument("policy", help="path to the policy YAML")
    validate.set_defaults(handler=_validate)
    run = commands.add_parser("run", help="run a pipeline on a local Ray")
    run.add_argument("--config", help="pipeline YAML (default: examples/demo.yaml)")
    run.add_argument("--events", type=int, help="synthetic source: how many events")
    run.add_argument("--rate", type=float, help="synthetic source: events per second")
    run.add_argument("--lake", help="lake URI (folder or fsspec URL)")
    run.add_argument("--source", choices=["synthetic", "file", "kafka"], help="source kind")
    run.add_argument("--bootstrap", help="kafka: bootstrap servers, HOST:PORT")
    run.add_argument("--topic", action="append", help="kafka: topic to consume (repeatable)")
    run.add_argument("--group", help="kafka: consumer group id")
    run.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON last")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermocline`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
