"""cluster.yaml is a valid Ray cluster launcher config (checked offline, no cloud)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    # What `ray up` does before touching a cloud: merge the provider defaults, then check
    # against Ray's cluster-config schema (raises on anything it rejects).
    validate_config(prepare_config(config))
    head = config["available_node_types"][config["head_node_type"]]
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith("m")  # CPU head
    assert [w["node_config"]["InstanceType"][0] for w in workers] == ["g"]  # one GPU worker group
    assert all(w["min_workers"] == 0 and w["node_config"]["InstanceMarketOptions"] for w in workers)
    assert "-e ~/p2med" in " ".join(config["setup_commands"])
