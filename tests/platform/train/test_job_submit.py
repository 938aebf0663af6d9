"""The README's cluster command on a real local head (tests/platform/train/conftest.py):
`ray job submit --working-dir . -- p2med train ...` trains stage 1 writing to S3."""

from __future__ import annotations

import pytest
import torch

from p2med.model.checkpoint import load_model
from tests.platform.train.conftest import STAGE1_STEPS, metric_steps, mlflow_runs, unpacked_mlruns

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def test_train_runs_as_a_submitted_ray_job_writing_to_s3(submitted_stage1):
    """The tokenizer it trains, checkpoints, the model and MLflow's store, all on S3."""
    assert "succeeded" in submitted_stage1.output
    run = submitted_stage1.run
    for path in (
        ("tokenizer", "tokenizer.json"),
        ("stage1", "model", "p2med_config.json"),
        ("stage1", "ray", "checkpoint_manager_snapshot.json"),
    ):
        assert run.join(*path).exists(), path


def test_a_stage_tracks_its_metrics_in_mlflow(submitted_stage1, tmp_path):
    runs = mlflow_runs(unpacked_mlruns(submitted_stage1.run, 1, tmp_path))
    assert len(runs) == 1
    for name in ("loss", "val_loss", "lr", "tokens_per_s", "samples_per_s"):
        assert (runs[0] / "metrics" / name).exists(), name
    assert sorted(metric_steps(runs[0], "loss")) == list(range(1, STAGE1_STEPS + 1))
    assert sorted(metric_steps(runs[0], "val_loss")) == list(range(2, STAGE1_STEPS + 1, 2))


def test_tiny_reads_its_image_sizes_from_the_shards(submitted_stage1):
    """The model's vision input sizes follow the ingest (64 px X-rays, 8 x 32 x 32 CTs)."""
    folder = submitted_stage1.run.join("stage1", "model")
    model, _ = load_model(folder.uri, fs=folder.fs)
    vision = model.config.vision
    assert (vision.xray_size, vision.ct_slices, vision.ct_size) == (64, 8, 32)
    assert torch.isfinite(model.vision.encode_xray(torch.rand(1, 64, 64))[0]).all()
