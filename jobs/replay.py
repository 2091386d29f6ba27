"""Replay archived events through today's policy and processors: the kappa half.

    python -m jobs.replay --config pipeline.yaml --day 2026-11-20 --until 2026-11-26
    python -m jobs.replay --config pipeline.yaml --day 2026-11-20 --name new-policy --replace
    python -m jobs.replay --config kafka.yaml --kafka-from 2026-11-26T00:00:00Z \
        --kafka-until 2026-11-27T00:00:00Z

Two sources: the lake's archive (``--day``/``--until``), or the config's Kafka topics
(``--kafka-from`` a time or ``earliest``, ``--kafka-until`` a time, default their end now;
engine.sources.kafka_range: every partition from the first offset stamped at or after the start,
as Kafka's ``offsets_for_times`` finds it, to the one at the end; no consumer group, nothing
committed). A Kafka replay's default name is ``kafka-{from}-{until}`` (epoch ms).

From the lake, the pipeline's lake must archive every event (``cold.archive: all``, see
engine.sources.lake): the events of the days asked for (by event time, ``dt``), read from one
version of the events table, go through the pipeline built from ``--config`` as it is today (its
policy, its hot and warm processors, its bounds), in the stream's own order per source partition,
into a separate lake: ``{lake}/replays/{name}`` (default name: ``v{version}-{first day}-{last
day}``), a lake of its own with ``events/``, ``warm/``, ``state/`` and the rest. A changed policy
or processor thereby rebuilds its results beside the originals, and the serving view or a batch job
can be pointed at them (``--lake {lake}/replays/{name}``).

Routing is deterministic: age rules measure from each event's recorded arrival time, never the
clock, so with an unchanged policy every event takes the path it took the first time, and the
outputs (hot state, merged warm results, the lake's events) equal the first run's over those
events (the warm means to within float rounding: the replay cuts its micro-batches elsewhere,
as its blocks hold no dead letters, so partial sums add up in another order).

A replay's output is never mixed with another's: an existing output is refused unless
``--replace``, which deletes it first (also the way to finish a replay that crashed).

Progress goes to stderr; the last line on stdout is a one-line JSON summary (the run's own
summary, with the version read and the output lake). Exit codes: 0 done, 2 bad arguments, a lake
without an archive, or an output that exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from engine.cluster import connect
from engine.config import PipelineConfig, load_config
from engine.lake import Lake
from engine.pipeline import Pipeline
from engine.sources.base import Source
from engine.sources.kafka_range import KafkaRangeSource
from engine.sources.lake import LakeSource, NotAnArchiveError
from engine.summary import Progress
from jobs.options import parse_day
from routers import ConfigError

__all__ = ["REPLAYS_DIR", "main", "replay_uri"]

#: Where replays go, under the lake.
REPLAYS_DIR: Final[str] = "replays"


def replay_uri(lake_uri: str, name: str) -> str:
    """The lake a replay called ``name`` of ``lake_uri`` writes.

    Example:
        >>> replay_uri("s3://bucket/lake/", "v12-2026-11-20-2026-11-20")
        's3://bucket/lake/replays/v12-2026-11-20-2026-11-20'
    """
    return f"{lake_uri.rstrip('/')}/{REPLAYS_DIR}/{name}"


def _instant(text: str) -> int | str:
    """An ISO-8601 time with a zone as epoch milliseconds, or ``earliest``."""
    if text == "earliest":
        return text
    found = datetime.fromisoformat(text)
    if found.tzinfo is None:
        raise ValueError("a time needs its zone, e.g. 2026-11-26T00:00:00Z")
    return int(found.timestamp() * 1000)


def main(argv: Sequence[str] | None = None) -> int:
    """Replay the days ``argv`` names (see the module docs); the process's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="the pipeline YAML (policy, processors)")
    parser.add_argument("--lake", help="the archive lake (default: the config's cold.lake_uri)")
    span = parser.add_mutually_exclusive_group(required=True)
    span.add_argument("--day", type=parse_day, help="the lake's archive: the first day, YYYY-MM-DD")
    span.add_argument(
        "--kafka-from", type=_instant, help="the config's topics from this time (ISO), or earliest"
    )
    parser.add_argument("--until", type=parse_day, help="the last day (default: --day)")
    parser.add_argument(
        "--kafka-until", type=_instant, help="the topics up to this time (default: their end now)"
    )
    parser.add_argument("--version", type=int, help="the events table version (default: latest)")
    parser.add_argument("--name", help="the replay's name (default: v{version}-{day}-{until})")
    parser.add_argument("--replace", action="store_true", help="delete an existing output first")
    parser.add_argument("--block-rows", type=int, default=50_000, help="events per block")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else local)")
    args = parser.parse_args(argv)
    overrides = {"cold.lake_uri": args.lake} if args.lake else {}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        parser.error("; ".join(error.problems))
    if args.block_rows < 1:
        parser.error("--block-rows must be at least 1")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        parser.error("--name: a folder name (no '/', not starting with '.')")
    if args.kafka_from is not None:
        return _replay_kafka(parser, args, config, overrides)
    last = args.until or args.day
    if last < args.day:
        parser.error("--until must not be before --day")
    lake = Lake(config.cold.lake_uri, config.cold.storage_options)
    try:
        source = LakeSource(lake, args.day, last, args.block_rows, args.version)
    except NotAnArchiveError as error:
        parser.error(str(error))
    output = _output(parser, args, lake, args.name or f"v{source.version}-{args.day}-{last}")
    what = f"{lake.uri} events v{source.version}, {args.day}..{last}"
    extra = {"events_version": source.version, "days": [args.day, last]}
    return _run(args, overrides, lake, output, source, what, extra)


def _output(
    parser: argparse.ArgumentParser, args: argparse.Namespace, lake: Lake, name: str
) -> str:
    """The replay's lake, emptied first with ``--replace`` (refused if it exists without)."""
    output = replay_uri(lake.uri, name)
    root = lake.path(REPLAYS_DIR, name)
    if lake.fs.exists(root):
        if not args.replace:
            parser.error(f"{output} exists: give another --name, or --replace to rebuild it")
        lake.fs.rm(root, recursive=True)
    return output


def _replay_kafka(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    config: PipelineConfig,
    overrides: dict[str, Any],
) -> int:
    """The config's Kafka topics, from ``--kafka-from`` to ``--kafka-until``."""
    s = config.source
    if s.kind != "kafka" or s.bootstrap is None:
        parser.error("--kafka-from: the config's source must be kind: kafka (its topics)")
    start = None if args.kafka_from == "earliest" else args.kafka_from
    end = None if args.kafka_until is None else args.kafka_until
    if end == "earliest" or (start is not None and end is not None and end < start):
        parser.error("--kafka-until must be a time after --kafka-from")
    try:
        source = KafkaRangeSource(
            s.bootstrap, s.topics, start, end, s.max_records, dict(s.consumer)
        )
    except ValueError as error:
        parser.error(str(error))
    lake = Lake(config.cold.lake_uri, config.cold.storage_options)
    stamp = f"{start or 'earliest'}-{end or int(time.time() * 1000)}"
    output = _output(parser, args, lake, args.name or f"kafka-{stamp}")
    what = f"kafka {','.join(s.topics)} ({len(source.ranges)} partitions)"
    extra = {"topics": list(s.topics), "ranges": {p: list(r) for p, r in source.ranges.items()}}
    return _run(args, overrides, lake, output, source, what, extra)


def _progress(report: Progress) -> None:
    """A progress line on stderr (every ``progress_every_s`` of the config)."""
    routed = ", ".join(f"{n:,} {t}" for t, n in report.routed.items())
    print(f"replay: {report.events_in:,} events in {report.elapsed_s:.0f} s: {routed}",
          file=sys.stderr)  # fmt: skip


def _run(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    lake: Lake,
    output: str,
    source: Source,
    what: str,
    extra: dict[str, Any],
) -> int:
    """Run the replay of ``source`` into ``output``; print the summaries."""
    # Into the replay's own lake only: its alerts too, never again to the live alerts topic.
    replayed = load_config(
        args.config, {**overrides, "cold.lake_uri": output, "alerts_topic": None}
    )
    where = connect(args.address)
    print(f"replay: {what} -> {output} (Ray: {where})", file=sys.stderr)
    started = time.monotonic()
    pipeline = Pipeline(replayed, source=source)
    try:
        summary = pipeline.run(progress=_progress)
    finally:
        pipeline.close()  # its actors' CPUs back now, not when the collector gets to it
    result: dict[str, Any] = {
        "job": "replay",
        "lake": lake.uri,
        **extra,
        "output": output,
        "seconds": round(time.monotonic() - started, 3),
        "run": summary.to_json(),
    }
    print(
        f"replay: {summary.events_in:,} events: {summary.hot:,} hot, {summary.warm:,} warm,"
        f" {summary.cold:,} cold, {summary.dead_letter:,} dead letters",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
