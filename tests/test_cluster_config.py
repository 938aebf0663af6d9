"""cluster.yaml is a valid Ray cluster launcher config, and k8s/rayjob.yaml a KubeRay job
that runs a valid p2med command on our image (checked offline, no cloud)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from p2med.cli import JOBS, job_config

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
    # token authentication on every node, the token file on every node, the dashboard (job
    # submission) on the head's loopback
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_kuberay_rayjob_runs_a_valid_p2med_command_on_our_image():
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same build of the project
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # token authentication (KubeRay provisions the token); the S3 secret on the head only,
    # where the entrypoint runs and hands the credentials to its workers
    assert cluster["authOptions"] == {"mode": "token"}
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["envFrom"] == [{"secretRef": {"name": "p2med-s3"}}]
    assert all("envFrom" not in c and "env" not in c for c in gpu["template"]["spec"]["containers"])

    # the entrypoint is a p2med command whose arguments our typed config accepts
    program, name, *args = shlex.split(spec["entrypoint"])
    assert (program, name) == ("p2med", "train")
    config = job_config(JOBS[name].load(), name, args)
    assert config.scaling.workers <= gpu["maxReplicas"] and config.scaling.use_gpu

    # the image builds on the Ray image of cluster.yaml, at the Ray version we pin
    base = re.search(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.M)[1]
    assert base == yaml.safe_load((REPO / "cluster.yaml").read_text())["docker"]["image"]
    assert base.startswith(f"rayproject/ray:{ray.__version__}-")
