"""What `train` settles before it starts Ray, on the quick lane's small ingest: the inputs
it refuses and why, the model config it derives from the shards, and the DeepSpeed config
of a stage. Training itself, on a local Ray: test_train.py."""

from __future__ import annotations

import json
import shutil

import pytest
import ray

from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.errors import P2MedError
from p2med.platform.storage import resolve
from p2med.platform.train.deepspeed_config import deepspeed_config
from p2med.platform.train.settings import DeepSpeedSettings, ModelSettings, TrainSettings
from p2med.platform.train.trainer import has_progress, model_config_for, train


def test_bad_inputs_are_refused_before_ray_starts(small_ingest, tmp_path):
    shards, run = small_ingest.shards, resolve(str(tmp_path / "run"))
    ray_before = ray.is_initialized()  # a full run's slow tests may have started the session's Ray
    with pytest.raises(P2MedError, match=r"no manifest\.json"):
        train(resolve(str(tmp_path / "nothing")), run, TrainSettings(), [1], resume=False)

    old = tmp_path / "old-shards"
    shutil.copytree(shards.path, old)
    (old / "manifest.json").write_text(json.dumps(small_ingest.manifest | {"schema_version": 99}))
    with pytest.raises(P2MedError, match="schema version 99"):
        train(resolve(str(old)), run, TrainSettings(), [1], resume=False)

    with pytest.raises(P2MedError, match="stage 2 starts from stage 1's model"):
        train(shards, run, TrainSettings(), [2], resume=False)
    with pytest.raises(P2MedError, match=r"resume=true but .* holds no run of stage 1"):
        train(shards, run, TrainSettings(), [1], resume=True)
    assert ray.is_initialized() == ray_before  # refused before train would start or join a Ray


def test_progress_is_any_started_stage_of_those_asked_for(tmp_path):
    run = resolve(str(tmp_path / "run"))
    assert not has_progress(run, [1, 2, 3])
    run.join("stage2", "ray", "state.json").write_text("{}")
    assert has_progress(run, [2, 3]) and has_progress(run, [1, 2]) and not has_progress(run, [1, 3])


def test_the_model_takes_its_image_sizes_and_labels_from_the_shards(small_ingest):
    imaging = small_ingest.manifest["imaging"]
    config = model_config_for(TrainSettings(), small_ingest.manifest)
    vision = config.vision
    assert (vision.xray_size, vision.ct_slices, vision.ct_size) == (
        imaging["xray_size"],
        imaging["ct_slices"],
        imaging["ct_size"],
    )
    assert config.finding_labels == len(FINDING_LABELS)
    paper = TrainSettings(model=ModelSettings(preset="paper"))
    with pytest.raises(P2MedError, match=r"model\.preset=paper needs model\.llm and model\.vision"):
        model_config_for(paper, small_ingest.manifest)


def test_deepspeed_overrides_merge_into_the_generated_config():
    settings = DeepSpeedSettings(
        zero_stage=2, overrides={"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5}
    )
    config = deepspeed_config(settings, batch_size=4, grad_clip=0.5, bf16=False)
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}  # merged, not replaced
    assert config["steps_per_print"] == 5 and config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": False}
    assert "optimizer" not in config  # torch's optimizer is passed in (no FusedAdam build on CPU)
