"""Staged training on a real local Ray with 2 CPU workers (gloo, DeepSpeed ZeRO-2):
resume and a diverging loss, on a copy of the session cluster's run on the local S3 server
(conftest.py; the three stages with a worker killed are checked in test_cluster.py), and
the bad inputs it must refuse clearly. Each Ray Train fit costs tens of seconds of
start-up whatever its steps, so the tests share fits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2med.model.checkpoint import merge_lora, save_model
from p2med.model.presets import tiny
from p2med.model.tokenizer import train_bpe_tokenizer
from p2med.platform.errors import P2MedError
from p2med.platform.storage import resolve
from p2med.platform.train.settings import (
    AlignmentStageSettings,
    CheckpointSettings,
    DataSettings,
    DeepSpeedSettings,
    ModelSettings,
    ScalingSettings,
    StageSettings,
    StagesSettings,
    TrackingSettings,
    TrainSettings,
)
from p2med.platform.train.trainer import train
from tests.platform.train.conftest import STAGE2_STEPS, mlflow_runs, unpacked_mlruns
from tests.support.shards import replace_shard

pytestmark = pytest.mark.slow

# the training data held in memory, as tiny.yaml does
IN_MEMORY = DataSettings(max_length=96, shuffle_buffer=16, materialize=True)


def mixed(steps: int) -> StagesSettings:
    """Stage 2 with one image per rank and step: ranks often differ in modality (CT or
    X-ray), which once broke ZeRO's gradient reduction (every rank must reduce the same
    buckets); its vision steps skip the LLM, which must not break it either."""
    return StagesSettings(stage2=AlignmentStageSettings(steps=steps, batch_size=1, lr=3e-4, vision_steps=3))


def settings(steps: int = 4, **changes) -> TrainSettings:
    stage = StageSettings(steps=steps, batch_size=4, lr=3e-4)
    base = {
        "model": ModelSettings(vocab_size=512),
        "data": DataSettings(max_length=96, shuffle_buffer=16),
        "stages": StagesSettings(stage1=stage, stage2=AlignmentStageSettings(**dict(stage)), stage3=stage),
        "checkpoint": CheckpointSettings(every_steps=2, keep_best=1, val_batches=2),
        "tracking": TrackingSettings(log_every_steps=1),
        "scaling": ScalingSettings(workers=2, cpus_per_worker=0.5, max_failures=0, placement_timeout_s=2),
    }
    return TrainSettings(**(base | changes))


@pytest.fixture(scope="module")
def shards(small_ingest, ray_local) -> Path:
    """The quick lane's shards; the session's local Ray is up before any training here
    (else `train` would start one of its own, with the defaults of a user's run)."""
    return Path(small_ingest.shards.path)


def poisoned_copy(shards: Path, target: Path) -> Path:
    """The shards with every image's pixels set to NaN (a corrupt upstream step, say)."""
    shutil.copytree(shards, target)
    for path in target.rglob("*.parquet"):
        table = pq.read_table(path)
        for kind in ("xray", "ct"):
            column = table.column(kind).to_pylist()
            nan = [None if b is None else np.full(len(b) // 2, np.nan, np.float16).tobytes() for b in column]
            table = table.set_column(table.schema.get_field_index(kind), kind, pa.array(nan, pa.binary()))
        replace_shard(target, path, table)
    return target


def test_resume_goes_on_from_the_latest_checkpoint_and_a_nan_loss_stops_it_there(
    shards, cluster_run, tmp_path
):
    """A copy of the cluster's run (stage 2 on S3 under ZeRO-3, checkpoints up to its last
    step) stopped before its end, resumed for two more steps on images whose pixels are all
    NaN: it goes on at the next step, in the same MLflow run, where the loss diverges at
    once. One fit for both checks: each Ray Train fit costs tens of seconds of start-up."""
    job = cluster_run.run
    run = resolve(job.uri.rsplit("/", 1)[0] + "/resumed", job.storage)
    for part in ("tokenizer", "stage1", "stage2", "mlruns"):
        job.fs.copy(job.join(part).path + "/", run.join(part).path + "/", recursive=True)
    # as if the run had stopped at its last checkpoint while saving the model: a folder
    # with its config but not all of its weights is no finished stage
    run.join("stage2", "model", "resampler.safetensors").remove()
    bad = poisoned_copy(shards, tmp_path / "poisoned")
    zero3 = DeepSpeedSettings(zero_stage=3)
    config = settings(stages=mixed(steps=STAGE2_STEPS + 2), data=IN_MEMORY, deepspeed=zero3)
    last = STAGE2_STEPS
    diverged = rf"NaN or infinite at step {last + 1}.*last good checkpoint \(step {last}\)"  # not at step 1
    with pytest.raises(P2MedError, match=diverged) as error:
        train(resolve(str(bad)), run, config, [2], resume=True)

    kept = str(error.value).split(" is ")[1].split(";")[0]
    assert kept.startswith(run.join("stage2", "ray").uri + "/checkpoint_")
    assert resolve(kept, run.storage).join("state", "zero_pp_rank_1_mp_rank_00_model_states.pt").exists()
    assert not run.join("stage2", "model").exists()  # no diverged model passed on to stage 3
    # the resumed stage logged into its own run
    assert len(mlflow_runs(unpacked_mlruns(run, 2, tmp_path / "mlruns"))) == 1


def test_bad_inputs_are_refused_before_any_training(shards, tmp_path):
    with pytest.raises(P2MedError, match=r"no manifest\.json"):
        train(
            resolve(str(tmp_path / "nothing")), resolve(str(tmp_path / "run")), settings(), [1], resume=False
        )

    old = tmp_path / "old-shards"
    shutil.copytree(shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(manifest | {"schema_version": 99}))
    with pytest.raises(P2MedError, match="schema version 99"):
        train(resolve(str(old)), resolve(str(tmp_path / "run")), settings(), [1], resume=False)

    with pytest.raises(P2MedError, match="stage 2 starts from stage 1's model"):
        train(resolve(str(shards)), resolve(str(tmp_path / "run")), settings(), [2], resume=False)

    # a serving export (LoRA merged into the LLM) where stage 1's model belongs
    merged = tmp_path / "merged-run"
    tokenizer = train_bpe_tokenizer(["Findings: clear lungs. Impression: normal."] * 20, vocab_size=300)
    save_model(merge_lora(tiny(tokenizer)), tokenizer, str(merged / "stage1" / "model"))
    with pytest.raises(P2MedError, match=r"stage 2 starts from .*stage1/model, a model with its LoRA merged"):
        train(resolve(str(shards)), resolve(str(merged)), settings(), [2], resume=False)
    (merged / "stage1" / "model" / "resampler.safetensors").unlink()
    with pytest.raises(P2MedError, match=r"from stage 1's model: .* incomplete: missing resampler"):
        train(resolve(str(shards)), resolve(str(merged)), settings(), [2], resume=False)

    with pytest.raises(P2MedError, match=r"resume=true but .* holds no run of stage 1"):
        train(resolve(str(shards)), resolve(str(tmp_path / "empty")), settings(), [1], resume=True)

    # refused once the placement timeout has passed (not after training would wait forever)
    too_many = settings(scaling=ScalingSettings(workers=4, cpus_per_worker=1, placement_timeout_s=1))
    with pytest.raises(P2MedError, match=r"need 5 CPU \(the cluster has 2\); waited 1 s"):
        train(resolve(str(shards)), resolve(str(tmp_path / "run")), too_many, [1], resume=False)
    gpus = settings(scaling=ScalingSettings(workers=2, use_gpu=True, placement_timeout_s=1))
    with pytest.raises(P2MedError, match=r"need 2 GPU \(the cluster has 0\).*add GPU nodes"):
        train(resolve(str(shards)), resolve(str(tmp_path / "run")), gpus, [1], resume=False)
