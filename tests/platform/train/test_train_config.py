"""Training settings: stage 2's vision steps are its own and must leave alignment steps;
gradient checkpointing is on for the paper preset unless turned off; the attention kernel
is one transformers knows."""

from __future__ import annotations

import pytest

from p2med.platform.config import load_config
from p2med.platform.errors import ConfigError
from p2med.platform.train.settings import TrainSettings


def test_vision_steps_must_leave_steps_for_alignment():
    settings = load_config(TrainSettings, None, ["stages.stage2.steps=300", "stages.stage2.vision_steps=200"])
    assert settings.stages.stage2.vision_steps == 200
    with pytest.raises(ConfigError, match=r"stage2.*vision_steps \(300\) must be fewer than steps \(300\)"):
        load_config(TrainSettings, None, ["stages.stage2.steps=300", "stages.stage2.vision_steps=300"])


def test_a_model_without_finding_head_has_no_vision_steps():
    none = ["model.alignment=none", "stages.stage2.vision_steps=0"]
    assert load_config(TrainSettings, None, none).model.alignment == "none"
    with pytest.raises(ConfigError, match=r"alignment=none has no finding head.*vision_steps=0"):
        load_config(TrainSettings, None, ["model.alignment=none", "stages.stage2.vision_steps=10"])
    with pytest.raises(ConfigError, match=r"model.alignment"):
        load_config(TrainSettings, None, ["model.alignment=verdicts"])


def test_only_stage_2_has_vision_steps():
    with pytest.raises(ConfigError, match=r"stages.stage3.vision_steps"):
        load_config(TrainSettings, None, ["stages.stage3.vision_steps=10"])


@pytest.mark.parametrize(
    ("overrides", "checkpointing"),
    [
        ([], False),
        (["model.preset=paper"], True),
        (["model.preset=paper", "model.gradient_checkpointing=false"], False),
        (["model.gradient_checkpointing=true"], True),
    ],
)
def test_gradient_checkpointing_defaults_to_the_preset(overrides, checkpointing):
    assert load_config(TrainSettings, None, overrides).model.checkpoints_activations is checkpointing


def test_an_unknown_attention_kernel_is_refused_naming_the_known_ones():
    assert load_config(TrainSettings, None, ["model.attention=eager"]).model.attention == "eager"
    with pytest.raises(ConfigError, match=r"model.attention.*'sdpa'.*'flash_attention_2'"):
        load_config(TrainSettings, None, ["model.attention=flash2"])
