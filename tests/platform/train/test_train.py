"""Staged training on a real local Ray with 2 CPU workers (gloo, DeepSpeed ZeRO-2): stage
2 on the local S3 server from the stage 1 a submitted job trained there (conftest.py), with
a worker killed; resume; a diverging loss; and the bad inputs it must refuse clearly. The
three stages run on local disk in the quickstart test. Each Ray Train fit costs tens of
seconds of start-up whatever its steps, so the tests share fits: stage 2 with a worker
killed once, and the resume test continues a copy of that run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2med.model.checkpoint import load_model
from p2med.model.generation import GenerationSettings, encode_prompts, generate
from p2med.platform.errors import P2MedError, StorageError
from p2med.platform.storage import Location, resolve
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
from tests.platform.train.conftest import metric_steps, mlflow_runs, unpacked_mlruns

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


def registered_checkpoint(snapshot: Location) -> bool:
    """Whether Ray Train's controller has taken in a checkpoint (its files alone are not
    enough: a report made just before a worker dies can be lost)."""
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (StorageError, ValueError):  # not written yet
        return False


@pytest.fixture(scope="module")
def recovered_run(shards, submitted_stage1) -> Location:
    """Stage 2 for 10 steps on S3 (the shards stay local), in the run of the submitted
    stage 1, one of its two workers killed (SIGKILL) once the controller has taken in a
    checkpoint; max_failures=1 lets Ray Train replace it."""
    run = submitted_stage1.run
    config = settings(
        stages=mixed(steps=10),
        data=IN_MEMORY,
        scaling=ScalingSettings(workers=2, cpus_per_worker=0.5, max_failures=1),
    )
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["summary"] = train(resolve(str(shards)), run, config, [2], resume=False)
        except Exception as exc:  # reported below, on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    snapshot = run.join("stage2", "ray", "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 600
    while not registered_checkpoint(snapshot) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.5)
    time.sleep(1)  # past the controller's next poll of the workers (tests/conftest.py sets its interval)
    workers = [
        p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
    ]
    assert workers, "no training worker found to kill"
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=900)
    assert "error" not in outcome, outcome.get("error")
    return run


def test_a_killed_worker_is_replaced_and_the_run_on_s3_goes_on_from_its_checkpoint(recovered_run, tmp_path):
    """Everything of the stage on S3: the previous stage's model, checkpoints of both ranks,
    the model, the loss curve and MLflow's store."""
    folder = recovered_run.join("stage2")
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
    runs = mlflow_runs(unpacked_mlruns(recovered_run, 2, tmp_path))
    # the replacement workers continued the same run: its state came from the checkpoint
    assert len(runs) == 1
    steps = metric_steps(runs[0], "loss")
    assert max(steps) == 10 and steps.count(1) == 1  # it went on, it did not start over


def poisoned_copy(shards: Path, target: Path) -> Path:
    """The shards with every image's pixels set to NaN (a corrupt upstream step, say)."""
    shutil.copytree(shards, target)
    for path in target.rglob("*.parquet"):
        table = pq.read_table(path)
        for kind in ("xray", "ct"):
            column = table.column(kind).to_pylist()
            nan = [None if b is None else np.full(len(b) // 2, np.nan, np.float16).tobytes() for b in column]
            table = table.set_column(table.schema.get_field_index(kind), kind, pa.array(nan, pa.binary()))
        pq.write_table(table, path)
    return target


def test_resume_goes_on_from_the_latest_checkpoint_and_a_nan_loss_stops_it_there(
    shards, recovered_run, tmp_path
):
    """A copy of the worker-kill test's run (stage 2 on S3, checkpoints up to step 10)
    stopped before its end, resumed to step 12 on images whose pixels are all NaN: it goes
    on at step 11, in the same MLflow run, where the loss diverges at once. One fit for both
    checks: each Ray Train fit costs tens of seconds of start-up."""
    run = resolve(recovered_run.uri.rsplit("/", 1)[0] + "/resumed", recovered_run.storage)
    run.fs.copy(recovered_run.path + "/", run.path + "/", recursive=True)
    run.join("stage2", "model").remove()  # as if the run had stopped at its last checkpoint
    bad = poisoned_copy(shards, tmp_path / "poisoned")
    config = settings(stages=mixed(steps=12), data=IN_MEMORY)
    diverged = r"NaN or infinite at step 11.*last good checkpoint \(step 10\)"  # not at step 1
    with pytest.raises(P2MedError, match=diverged) as error:
        train(resolve(str(bad)), run, config, [2], resume=True)

    kept = str(error.value).split(" is ")[1].split(";")[0]
    assert kept.startswith(run.join("stage2", "ray").uri + "/checkpoint_")
    assert resolve(kept, run.storage).join("state", "mp_rank_00_model_states.pt").exists()
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

    with pytest.raises(P2MedError, match=r"resume=true but .* holds no run of stage 1"):
        train(resolve(str(shards)), resolve(str(tmp_path / "empty")), settings(), [1], resume=True)

    zero3 = settings(deepspeed=DeepSpeedSettings(zero_stage=3))
    with pytest.raises(P2MedError, match="zero_stage=3 trains stage 1 only"):
        train(resolve(str(shards)), resolve(str(tmp_path / "run")), zero3, [1, 2], resume=False)

    # refused once the placement timeout has passed (not after training would wait forever)
    too_many = settings(scaling=ScalingSettings(workers=4, cpus_per_worker=1, placement_timeout_s=1))
    with pytest.raises(P2MedError, match=r"need 5 CPU but the cluster has 2 CPU \(waited 1 s\)"):
        train(resolve(str(shards)), resolve(str(tmp_path / "run")), too_many, [1], resume=False)
