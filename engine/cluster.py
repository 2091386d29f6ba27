"""Where Ray runs: an existing cluster (``--address``, ``RAY_ADDRESS``) or the embedded local one.

Example:
    >>> resolve_address(None, {"RAY_ADDRESS": "127.0.0.1:6379"})
    '127.0.0.1:6379'
    >>> resolve_address("auto", {}) is None  # nothing given: the embedded local Ray
    False
    >>> resolve_address(None, {}) is None
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from engine.priority import WORKER_NICENESS

__all__ = ["connect", "init_local_ray", "resolve_address"]


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster to join: ``address`` (a command's ``--address``), else ``RAY_ADDRESS``,
    else None (start the embedded local Ray)."""
    return address or environ.get("RAY_ADDRESS") or None


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
