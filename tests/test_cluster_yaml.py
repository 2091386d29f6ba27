"""cluster.yaml is a Ray cluster launcher config that Ray accepts, with one worker node type per
path, each advertising the custom resource that path's config asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def cluster() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    return loaded


def test_cluster_yaml_validates_against_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster()))  # raises on a schema or node-type error


def test_each_path_has_its_own_node_type_and_resource() -> None:
    types = cluster()["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}  # the head runs drivers, no path
    for path in ("hot", "warm", "cold"):
        node = types[f"{path}_workers"]
        custom = {k for k in node["resources"] if k != "CPU"}
        assert custom == {path}, (path, node["resources"])
        assert node["min_workers"] <= node["max_workers"] and node["idle_timeout_s"] > 0
        # What a pipeline config names to land there is a valid config.
        config = PipelineConfig.from_dict({path: {"resources": {path: 1}}})
        assert dict(getattr(config, path).resources) == {path: 1}
    assert types["cold_workers"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert (
        sum(t["max_workers"] for n, t in types.items() if n != "head") <= cluster()["max_workers"]
    )
