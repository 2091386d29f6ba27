"""The arguments the jobs over the lake share: the lake (``--lake`` or a pipeline's
``--config``), the days (``--day``, ``--until``) and the Ray cluster (``--address``).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_lake_arguments(parser); add_day_arguments(parser)
    >>> args = parser.parse_args(["--lake", "lake", "--day", "2026-11-20", "--until", "2026-11-21"])
    >>> config_from(parser, args) is None, days_from(parser, args)
    (True, (datetime.date(2026, 11, 20), datetime.date(2026, 11, 21)))
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta, timezone

from engine.config import PipelineConfig, load_config
from engine.lake import Lake
from routers import ConfigError

__all__ = [
    "add_day_arguments",
    "add_lake_arguments",
    "config_from",
    "days_from",
    "lake_from",
    "parse_day",
]


def add_lake_arguments(parser: argparse.ArgumentParser, config_help: str = "") -> None:
    """``--lake``, ``--config`` and ``--address``."""
    parser.add_argument("--lake", help="lake URI: a folder or s3://bucket/prefix")
    parser.add_argument(
        "--config", help=config_help or "a pipeline YAML: its lake and storage options"
    )
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else local)")


def add_day_arguments(parser: argparse.ArgumentParser) -> None:
    """``--day`` (default: yesterday, UTC) and ``--until`` (default: ``--day``)."""
    parser.add_argument(
        "--day", type=parse_day, help="the (first) day, YYYY-MM-DD (default: yesterday)"
    )
    parser.add_argument("--until", type=parse_day, help="the last day of a range (default: --day)")


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PipelineConfig | None:
    """The pipeline config ``--config`` names (its lake replaced by ``--lake``), or None; exits
    through ``parser.error`` on a bad config, or when neither names a lake."""
    config = None
    if args.config:
        try:
            config = load_config(args.config, {"cold.lake_uri": args.lake} if args.lake else {})
        except ConfigError as error:
            parser.error("; ".join(error.problems))
    if config is None and not args.lake:
        parser.error("give --lake URI (or --config with a pipeline's cold.lake_uri)")
    return config


def lake_from(config: PipelineConfig | None, args: argparse.Namespace) -> Lake:
    """The lake of ``config`` (with its storage options), else of ``--lake``."""
    cold = config.cold if config is not None else None
    return Lake(cold.lake_uri, cold.storage_options) if cold else Lake(args.lake)


def days_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[date, date]:
    """The first and last day asked for; exits through ``parser.error`` when they are reversed."""
    first = (
        date.fromisoformat(args.day)
        if args.day
        else datetime.now(timezone.utc).date() - timedelta(1)
    )
    last = date.fromisoformat(args.until) if args.until else first
    if last < first:
        parser.error(f"--until {last} is before --day {first}: give --until {first} or later")
    return first, last


def parse_day(text: str) -> str:
    """An argument's ISO day, checked (an argparse ``type``)."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day YYYY-MM-DD, got {text!r}") from None
