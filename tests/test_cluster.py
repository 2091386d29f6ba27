"""Runs on an existing Ray cluster: ``thermocline run --address`` and ``RAY_ADDRESS`` join it
instead of starting a local Ray, so a path that asks for a node type's resource (``hot.resources:
{hot: 1}``, as cluster.yaml's hot workers advertise) is placed there. The cluster is a real
multi-node Ray on this machine (``ray.cluster_utils.Cluster``: a head and a ``hot`` node)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="tc-cl-", dir="/tmp")  # short: Unix socket paths
    started = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "temp_dir": temp, "include_dashboard": False},
    )
    started.add_node(num_cpus=1, resources={"hot": 2})
    started.wait_for_nodes()
    yield started
    started.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def hot_on_its_own_nodes(tmp_path: Path) -> Path:
    """The demo pipeline with its hot actors on nodes advertising ``hot`` (cluster.yaml's)."""
    config = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    config["hot"]["resources"] = {"hot": 1}
    path = tmp_path / "on-cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def thermocline(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    environ = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": "/tmp"}
    environ.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--events", "20000", "--json",
         "--lake", str(tmp_path / "lake"), *args],
        capture_output=True, text=True, cwd=ROOT, env={**environ, **(env or {})}, timeout=300,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_run_joins_a_cluster_and_places_hot_actors_on_hot_nodes(
    how: str, cluster: Any, tmp_path: Path
) -> None:
    config = hot_on_its_own_nodes(tmp_path)
    if how == "--address":
        done = thermocline(tmp_path, "--config", str(config), "--address", cluster.address)
    else:
        done = thermocline(tmp_path, "--config", str(config), env={"RAY_ADDRESS": cluster.address})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"joining the Ray cluster at {cluster.address}" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 20_000 and summary["hot"] > 0
    assert summary["hot"] + summary["warm"] + summary["cold"] + summary["dead_letter"] == 20_000


def test_without_a_cluster_the_same_config_is_refused_before_ray_starts(tmp_path: Path) -> None:
    done = thermocline(tmp_path, "--config", str(hot_on_its_own_nodes(tmp_path)))
    assert done.returncode != 0
    assert "hot.resources" in done.stderr and "--address" in done.stderr
    assert "starting a local Ray" not in done.stderr
