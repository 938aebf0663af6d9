"""The README's cluster commands on a two-node local cluster (conftest.py): a submitted
`p2med train` job trains the three stages on S3 with one worker per node and recovers from
a killed worker; `p2med serve` serves its model with the LLM's replicas on both nodes.
Neither node has the API keys in its environment, the second node not the S3 credentials
either: they reach the processes that need them from the commands that were given them."""

from __future__ import annotations

import pytest
import torch

from p2med.model.checkpoint import load_model
from p2med.model.generation import GenerationSettings, encode_prompts, generate
from tests.platform.train.conftest import (
    STAGE1_STEPS,
    STAGE2_STEPS,
    metric_steps,
    mlflow_runs,
    unpacked_mlruns,
)

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def test_the_job_trains_every_stage_with_one_worker_on_each_node(cluster_run):
    assert "succeeded" in cluster_run.output
    assert len(cluster_run.nodes) == 2 and cluster_run.trained_on == cluster_run.nodes
    run = cluster_run.run
    for path in (("tokenizer", "tokenizer.json"), ("stage3", "model", "p2med_config.json")):
        assert run.join(*path).exists(), path


def test_a_killed_worker_is_replaced_and_stage_2_goes_on_from_its_checkpoint(cluster_run, tmp_path):
    """Everything of the stage on S3: the previous stage's model, checkpoints of both ranks,
    the model, the loss curve and MLflow's store."""
    assert "resumes at step" in cluster_run.output
    folder = cluster_run.run.join("stage2")
    assert folder.join("loss.png").read_bytes()[:4] == b"\x89PNG"
    ranks = {p.rsplit("/", 1)[-1] for p in folder.join("ray").list_files() if p.startswith("checkpoint_")}
    assert {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= ranks
    model, tokenizer = load_model(folder.join("model").uri, fs=folder.fs)
    assert set(model.config.trained) == {"vision", "resampler", "alignment", "llm_base", "lora"}
    ids, mask = encode_prompts(tokenizer, ["Impression:"])
    assert isinstance(
        generate(model, tokenizer, ids, mask, settings=GenerationSettings(max_new_tokens=4))[0], str
    )
    runs = mlflow_runs(unpacked_mlruns(cluster_run.run, 2, tmp_path))
    # the replacement workers continued the same run: its state came from the checkpoint
    assert len(runs) == 1
    steps = metric_steps(runs[0], "loss")
    assert max(steps) == STAGE2_STEPS and steps.count(1) == 1  # it went on, it did not start over


def test_a_stage_tracks_its_metrics_in_mlflow(cluster_run, tmp_path):
    runs = mlflow_runs(unpacked_mlruns(cluster_run.run, 1, tmp_path))
    assert len(runs) == 1
    for name in ("loss", "val_loss", "lr", "tokens_per_s", "samples_per_s"):
        assert (runs[0] / "metrics" / name).exists(), name
    assert sorted(metric_steps(runs[0], "loss")) == list(range(1, STAGE1_STEPS + 1))
    assert sorted(metric_steps(runs[0], "val_loss")) == list(range(2, STAGE1_STEPS + 1, 2))


def test_tiny_reads_its_image_sizes_from_the_shards(cluster_run):
    """The model's vision input sizes follow the ingest (64 px X-rays, 8 x 32 x 32 CTs)."""
    folder = cluster_run.run.join("stage1", "model")
    model, _ = load_model(folder.uri, fs=folder.fs)
    vision = model.config.vision
    assert (vision.xray_size, vision.ct_slices, vision.ct_size) == (64, 8, 32)
    assert torch.isfinite(model.vision.encode_xray(torch.rand(1, 64, 64))[0]).all()


def test_the_served_model_answers_from_both_nodes_with_the_keys_of_the_serve_command(cluster_run):
    """A model replica on each node, the one on the second node reading the model from S3
    with credentials only the serve command had; the ingress accepts the key that only the
    serve command had, and refuses another."""
    assert cluster_run.served_on == cluster_run.nodes
    assert cluster_run.answers == [200, 200, 200, 200, 401]
