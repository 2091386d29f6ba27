"""Runs on an existing Ray cluster: ``thermocline run --address`` and ``RAY_ADDRESS`` join it
instead of starting a local Ray, and each path lands on its own node type: the one advertising
its resource (``hot``, ``warm``, ``cold``, as cluster.yaml's node types do), whether the config
names it (``hot.resources: {hot: 1}``) or not; the jobs' tasks run on the cold nodes. The
cluster is a real multi-node Ray on this machine (``ray.cluster_utils.Cluster``: a head without
CPUs and one node per path), and where things ran is read from Ray's state API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_compact import small_files_lake

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="tc-cl-", dir="/tmp")  # short: Unix socket paths
    started = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,  # as cluster.yaml's head: it runs drivers only
            "temp_dir": temp,
            "include_dashboard": True,  # the state API (where did each actor and task run)
            "dashboard_port": free_port(),
        },
    )
    started.nodes_by_path = {  # type: ignore[attr-defined]
        path: started.add_node(num_cpus=1, resources={path: 2}).node_id
        for path in ("hot", "warm", "cold")
    }
    started.wait_for_nodes()
    yield started
    started.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def where(cluster: Any) -> dict[str, set[str]]:
    """The nodes each of our actors and tasks ran on, by class or function name."""
    from ray.util.state import list_actors, list_tasks

    address = f"http://{cluster.head_node.address_info['webui_url']}"
    found: dict[str, set[str]] = {}
    for actor in list_actors(address=address, limit=10_000, raise_on_missing_output=False):
        found.setdefault(actor.class_name, set()).add(actor.node_id)
    for task in list_tasks(address=address, limit=10_000, raise_on_missing_output=False):
        if task.type == "NORMAL_TASK" and task.node_id:
            found.setdefault(task.name, set()).add(task.node_id)
    return found


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


def test_each_path_and_the_jobs_land_on_their_own_node_type(cluster: Any, tmp_path: Path) -> None:
    """The demo config names no resources: on this cluster each path asks for its own."""
    done = thermocline(tmp_path, "--config", "examples/demo.yaml", "--address", cluster.address)
    assert done.returncode == 0, done.stderr[-3000:]
    lake = tmp_path / "small-files"
    small_files_lake(str(lake))
    job = subprocess.run(
        [sys.executable, "-m", "jobs.compact", "--lake", str(lake), "--address", cluster.address],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    nodes = cluster.nodes_by_path
    deadline = time.monotonic() + 30  # task events reach the state API within a few seconds
    while True:
        ran = where(cluster)
        expected = {"_HotActor": "hot", "_ColdWriter": "cold", "run_micro_batch": "warm",
                    "_compact_partition": "cold"}  # fmt: skip
        if all(name in ran for name in expected) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name, path in expected.items():
        assert ran.get(name) == {nodes[path]}, (name, path, ran.get(name), nodes)
