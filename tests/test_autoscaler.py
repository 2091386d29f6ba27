"""Under Ray's fake multi-node autoscaler, with cluster.yaml's node types at zero workers, the
cold path's demand (the compaction job's tasks, its driver given THERMOCLINE_PATH_NODES as
cluster.yaml's head gives the drivers it starts) brings up a node of the cold_workers type and
of no other type.

The head is ``RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...`` on
127.0.0.1 in a temporary folder (PLATFORM_NOTES); its fake nodes are processes on this machine,
stopped with the head's process group."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from engine.cluster import PATH_NODES_ENV
from tests.test_compact import files_per_hour, small_files_lake
from tests.test_submit import BIN, ROOT, environment, free_port, stop_group

FAKE_HEAD = "ray.head.default"


def fake_autoscaling_config(folder: Path, gcs_address: str) -> Path:
    """cluster.yaml's node types (their resources, one CPU each here) on the fake provider,
    every worker type at zero workers."""
    real = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types: dict[str, Any] = {}
    for name, node_type in real["available_node_types"].items():
        resources = {k: v for k, v in node_type["resources"].items() if k != "CPU"}
        worker = name != real["head_node_type"]
        # The fake provider's head is always of this type: under another name its resources
        # are ignored ("Missing entry for node_type ray.head.default").
        name = name if worker else FAKE_HEAD
        types[name] = {
            "resources": {"CPU": 1 if worker else 0, **resources},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1 if worker else 0,
        }
    config = {
        "cluster_name": "fake",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else its nodes look for a head on port 6379
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": FAKE_HEAD,
        "available_node_types": types,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    path = folder / "fake-cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def alive_nodes(address: str) -> list[dict[str, float]]:
    script = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        " print('NODES', json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
        env={**environment(), "RAY_AUTH_MODE": "token"}, timeout=120, check=True,
    )  # fmt: skip
    # The driver may print the autoscaler's events ("(autoscaler +4s) Resized to 0 CPUs.")
    # around our line, in any order: ours is the one with the marker.
    line = next(x for x in done.stdout.splitlines() if x.startswith("NODES "))
    return list(json.loads(line.removeprefix("NODES ")))


def test_cold_demand_brings_up_a_cold_node_and_no_other(tmp_path: Path) -> None:
    small_files_lake(str(tmp_path / "lake"))
    temp = tempfile.mkdtemp(prefix="tc-fake-", dir="/tmp")
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**environment(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
         f"--autoscaling-config={fake_autoscaling_config(tmp_path, address)}", "--num-cpus=0",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={free_port()}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                before = alive_nodes(address)
                break
            except subprocess.CalledProcessError:
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the fake cluster's head did not come up"
                time.sleep(1)
        assert [n.get("CPU", 0) for n in before] == [0]  # the head alone, no worker yet
        job = subprocess.run(
            [sys.executable, "-m", "jobs.compact", "--lake", str(tmp_path / "lake"),
             "--address", address],
            capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
            env={**environment(), "RAY_AUTH_MODE": "token", PATH_NODES_ENV: "hot,warm,cold"},
        )  # fmt: skip
        assert job.returncode == 0, job.stderr[-3000:]
        assert files_per_hour(str(tmp_path / "lake" / "events")) == dict.fromkeys("012", 1)
        kinds = sorted(
            path
            for node in alive_nodes(address)
            for path in ("hot", "warm", "cold")
            if path in node
        )
        assert kinds == ["cold"]  # one cold node came up for the job's tasks; no other type
    finally:
        stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)
