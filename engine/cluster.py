"""Where Ray runs: an existing cluster (``--address``, ``RAY_ADDRESS``) or the embedded local one.

Example:
    >>> resolve_address(None, {"RAY_ADDRESS": "127.0.0.1:6379"})
    '127.0.0.1:6379'
    >>> resolve_address("auto", {}) is None  # nothing given: the embedded local Ray
    False
    >>> resolve_address(None, {}) is None
    True
    >>> resolve_address(None, {"RAY_ADDRESS": "http://head:8265"}) is None  # a Jobs API
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from engine.config import PipelineConfig
from engine.priority import WORKER_NICENESS

__all__ = [
    "PATH_NODES_ENV",
    "PATH_RESOURCES",
    "connect",
    "init_local_ray",
    "on_path_nodes",
    "path_resource",
    "resolve_address",
]

#: The custom resource each path's node type advertises (cluster.yaml's hot_workers,
#: warm_workers, cold_workers); the jobs over the lake run on the cold path's nodes.
PATH_RESOURCES: tuple[str, str, str] = ("hot", "warm", "cold")
#: The paths whose node types an autoscaling cluster can start while none runs (comma
#: separated, e.g. ``hot,warm,cold``; cluster.yaml's head sets it). Ray tells a driver the
#: resources of the nodes up, not of the node types it could start, so without this a path
#: whose node type is at zero workers would run elsewhere instead of asking for one.
PATH_NODES_ENV: str = "THERMOCLINE_PATH_NODES"


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster to join: ``address`` (a command's ``--address``), else ``RAY_ADDRESS``,
    else None (start the embedded local Ray)."""
    found = address or environ.get("RAY_ADDRESS") or None
    # An http address is a cluster's Jobs API (thermocline submit's), not one to join.
    return None if found is not None and found.startswith(("http://", "https://")) else found


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> str:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start the embedded local
    Ray when neither is given. Nothing happens when Ray is already up in this process.

    Args:
        address: a head's GCS address (``HOST:6379``), ``auto``, or ``ray://HOST:10001``.
        num_cpus: the local Ray's CPUs (ignored when joining a cluster).
        verbose: Ray's own info messages.

    Returns:
        Where this process runs: the cluster's address, or ``local``.
    """
    import ray  # here: resolving an address (before a run starts) does not load Ray

    target = resolve_address(address)
    if ray.is_initialized():
        return target or "local"
    if target is None:
        init_local_ray(num_cpus, verbose)
        return "local"
    ray.init(
        address=target,
        log_to_driver=True,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )
    return target


def init_local_ray(num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start a local Ray on 127.0.0.1 (the embedded default) unless one is already up.

    ``address="local"`` never joins a stale cluster left by a crashed run (PLATFORM_NOTES).
    Ray's notice that it enabled token authentication (its default for a new local cluster, kept)
    is shown only with ``verbose``, with Ray's own info messages.
    """
    import ray

    if ray.is_initialized():
        return
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice.setLevel(logging.INFO if verbose else logging.ERROR)
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.INFO if verbose else logging.WARNING,
        # Workers at the driver's priority, not Ray's 15 below it (engine.priority).
        _system_config={"worker_niceness": WORKER_NICENESS},
    )


def path_resource(path: str, environ: Mapping[str, str] = os.environ) -> dict[str, float]:
    """``{path: 1}`` when the cluster has nodes advertising ``path``'s resource (cluster.yaml's
    node types) or can start some (``THERMOCLINE_PATH_NODES``), else nothing: on a laptop, or a
    cluster without such nodes, work runs anywhere. Ray must be up.

    Raises:
        ValueError: ``THERMOCLINE_PATH_NODES`` names something that is not a path.
    """
    import ray

    listed = [p.strip() for p in environ.get(PATH_NODES_ENV, "").split(",") if p.strip()]
    unknown = sorted(set(listed) - set(PATH_RESOURCES))
    if unknown:
        raise ValueError(
            f"{PATH_NODES_ENV}={environ[PATH_NODES_ENV]!r}: {', '.join(unknown)} is no path;"
            f" list some of {', '.join(PATH_RESOURCES)}, comma separated"
        )
    if path in listed:
        return {path: 1.0}
    return {path: 1.0} if ray.cluster_resources().get(path, 0) > 0 else {}


def on_path_nodes(config: PipelineConfig) -> PipelineConfig:
    """``config`` with each path that names no ``resources`` asking for its own node type's
    (:func:`path_resource`), so the autoscaler grows each node type on its own path's demand.
    Ray must be up."""
    update = {}
    for path in PATH_RESOURCES:
        section = getattr(config, path)
        wanted = path_resource(path)
        if not section.resources and wanted:
            update[path] = section.model_copy(update={"resources": wanted})
    return config.model_copy(update=update) if update else config
