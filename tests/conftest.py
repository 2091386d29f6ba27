"""Shared fixtures: one local Ray for the test session, on 127.0.0.1, with its own temp dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# Before Ray is imported anywhere: bind to loopback (PLATFORM_NOTES).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs shared by every test that needs one.

    Its own short temp dir (Unix socket paths are limited to ~107 bytes) keeps it away from a
    stale cluster file of a crashed run; ``address="local"`` never joins another cluster.
    """
    import ray

    temp = tempfile.mkdtemp(prefix="tc-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        # Workers import tests.* (e.g. a slow processor named 'tests.slow:SlowKpis').
        runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
    )
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
