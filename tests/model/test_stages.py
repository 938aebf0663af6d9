"""Stage plans: gradients reach exactly the parts a stage trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from p2med.model.interleave import IGNORE_INDEX
from p2med.model.stages import apply_stage, part_parameters, stage_parts
from tests.model.conftest import MIXED_TEXTS, mixed_images, right_padded, some_findings


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gradients_flow_exactly_where_the_plan_says(model, tokenizer, stage):
    model.train()
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without gradient
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
        model.alignment.hint.weight.normal_(std=0.02)  # the same for the finding head's hint
    plan = apply_stage(model, stage)
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    findings = some_findings(4, model.config.finding_labels) if stage == 2 else None
    out = model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), mixed_images(), findings)
    (out.loss if findings is None else out.loss + out.finding_loss).backward()

    for part, params in part_parameters(model).items():
        for param in params:
            if part in plan.parts:
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{part} got no gradient"
            else:
                assert param.grad is None, f"{part} got a gradient in stage {stage}"
    assert plan.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.total == sum(p.numel() for p in model.parameters())
    assert set(plan.parts) <= set(model.config.trained)


def test_tiny_and_pretrained_plans(model):
    assert stage_parts(model, 1) == ("lora", "llm_base")  # random-init LLM: LoRA alone is too weak
    assert stage_parts(model, 2) == ("vision", "resampler", "alignment")
    assert stage_parts(model, 3) == ("lora", "llm_base", "resampler", "alignment")
    model.config = dataclasses.replace(
        model.config,
        llm=dataclasses.replace(model.config.llm, pretrained="llama"),
        vision=dataclasses.replace(model.config.vision, pretrained="clip"),
    )
    assert stage_parts(model, 1) == ("lora",)
    assert stage_parts(model, 2) == ("resampler", "alignment")
    assert stage_parts(model, 3) == ("lora", "resampler", "alignment")
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_parts(model, 4)
