"""Checks a run makes before Ray starts: what cannot work is refused in one line, at once.

Each failure is a :class:`StartupError` naming the setting, the value and what to do, with the
exit status the CLI returns: 2 when the configuration is wrong, 1 when the environment is (a
broker that does not answer). Before these checks, a newcomer met ``NotADirectoryError`` after
every event was processed, ``NoBrokersAvailable`` after 35 s, or a run that waited forever for
CPUs that do not exist.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

from engine.config import PipelineConfig
from engine.lake import Lake, LakeUnavailableError

__all__ = [
    "BROKER_TIMEOUT_S",
    "PLACEMENT_TIMEOUT_S",
    "PlacementError",
    "StartupError",
    "check_lake",
    "check_processors",
    "check_resources",
    "check_source",
]

#: How long a Kafka bootstrap server has to accept a connection at start-up.
BROKER_TIMEOUT_S = 5.0
#: How long the paths may take to be placed (their worker processes started) before the run
#: fails naming what they need: a cluster may be adding nodes; paths no node can hold never are.
PLACEMENT_TIMEOUT_S = 120.0


class StartupError(Exception):
    """A run that cannot start; ``str()`` is the one line to print, ``status`` the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class PlacementError(StartupError):
    """Ray did not place a path's actors or tasks in time (resources no node has)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=1)


def check_resources(config: PipelineConfig, cpus: float) -> None:
    """Refuse paths that a local Ray of ``cpus`` CPUs could never place (it would wait forever).

    Example:
        >>> cfg = PipelineConfig.from_dict({"hot": {"actors": 12}})
        >>> try:
        ...     check_resources(cfg, 2)
        ... except StartupError as exc:
        ...     print(str(exc)[:80])
        hot.actors: 12 hot actors x 0.25 CPU + lake writer 0.25 CPU + one warm task 0.25
    """
    hot, warm, cold = config.hot, config.warm, config.cold
    for name, path in (("hot", hot), ("warm", warm), ("cold", cold)):
        if path.resources:
            raise StartupError(
                f"{name}.resources: {dict(path.resources)} are custom Ray resources, which only"
                " a cluster's nodes advertise (cluster.yaml), and this run starts a local Ray;"
                f" remove {name}.resources to run here, or join a cluster that has them"
                " (--address HOST:6379, or RAY_ADDRESS)"
            )
    need = hot.actors * hot.num_cpus + cold.num_cpus + warm.num_cpus
    if need > cpus + 1e-9:
        raise StartupError(
            f"hot.actors: {hot.actors} hot actors x {hot.num_cpus:g} CPU + lake writer"
            f" {cold.num_cpus:g} CPU + one warm task {warm.num_cpus:g} CPU = {need:g} CPUs, but"
            f" this Ray has {cpus:g}; lower hot.actors or the paths' num_cpus, or give Ray more"
            " CPUs (--num-cpus)"
        )


def check_lake(config: PipelineConfig) -> None:
    """Write and remove a small object in the lake, so an unusable lake fails before any event."""
    uri = config.cold.lake_uri
    lake = Lake(uri, dict(config.cold.storage_options))
    probe = f"_state/.write-check-{uuid.uuid4().hex}"
    try:
        lake.write_text("", probe)
        lake.fs.rm(lake.path(probe))
    except (OSError, ValueError, LakeUnavailableError) as exc:
        if isinstance(exc, LakeUnavailableError | ConnectionError | TimeoutError):
            raise StartupError(
                f"cold.lake_uri: {uri!r} did not accept a write ({_cause(exc)}); check that the"
                " storage is reachable, then run again",
                status=1,
            ) from exc
        raise StartupError(
            f"cold.lake_uri: cannot write to {uri!r} ({_cause(exc)}); point --lake or"
            " cold.lake_uri at a folder or bucket you can write to"
        ) from exc
    except Exception as exc:  # e.g. botocore's NoCredentialsError: neither OSError nor ours
        raise StartupError(
            f"cold.lake_uri: cannot write to {uri!r} ({_cause(exc)}); check its credentials and"
            " endpoint (cold.storage_options, or the AWS_* variables)",
            status=1,
        ) from exc


def check_processors(config: PipelineConfig) -> None:
    """The ``processors`` modules import, and the hot and warm processors they name exist."""
    from engine.processors import hot_processor, import_modules, warm_processor
    from routers import ConfigError

    try:
        import_modules(config.processors)
        hot_processor(config.hot.processor)
        warm_processor(config.warm.processor)
    except ConfigError as exc:
        raise StartupError("; ".join(exc.problems)) from exc


def check_source(config: PipelineConfig) -> None:
    """The source's file exists; a Kafka bootstrap server accepts a connection."""
    source = config.source
    if source.kind == "file":
        from pathlib import Path

        if not Path(str(source.path)).exists():
            raise StartupError(
                f"source.path: {str(source.path)!r} does not exist; give an NDJSON or Parquet"
                " file, or a folder of them (--path)"
            )
        from engine.sources import FileSource

        if not FileSource(str(source.path)).files():
            raise StartupError(
                f"source.path: no .ndjson, .jsonl, .json or .parquet file in {str(source.path)!r}"
                " (sub-folders included, . and _ ones skipped)"
            )
    elif source.kind == "kafka":
        servers = [s.strip() for s in str(source.bootstrap).split(",") if s.strip()]
        for server in servers:
            if not server.rpartition(":")[2].isdigit():
                raise StartupError(
                    f"source.bootstrap: {server!r} needs a port, as host:port (Kafka's is often"
                    " 9092)"
                )
        for server in servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host or server, int(port)), BROKER_TIMEOUT_S):
                    return
            except (OSError, ValueError):
                continue
        raise StartupError(
            f"source.bootstrap: no Kafka broker accepted a connection at {source.bootstrap!r}"
            f" within {BROKER_TIMEOUT_S:g} s; check the address and that the broker is running",
            status=1,
        )


def _cause(exc: BaseException) -> str:
    cause: Any = exc.__cause__ or exc
    return " ".join(f"{type(cause).__name__}: {cause}".split())
