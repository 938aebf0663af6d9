"""Which parameters each training stage trains (DESIGN.md, "Three-stage training").

1. Medical text: LoRA of the LLM. A randomly initialised LLM (`tiny`) also trains its
   base weights: LoRA on a random base has far too little capacity.
2. Image-text alignment: the perceiver resampler and its projection, and the finding head
   (`alignment`, where the model has one); the vision encoder too when it is not
   pretrained. The LLM is frozen.
3. Instruction tuning: LoRA, the resampler and the finding head, which keeps its own
   finding loss and whose verdict the LLM reads with alignment `slots` (and, for a
   random-init LLM, its base).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from p2med.model.mllm import P2MedModel

STAGES = (1, 2, 3)
PARTS = ("vision", "resampler", "alignment", "llm_base", "lora")


@dataclass(frozen=True)
class StagePlan:
    """What a stage trains, and how many parameters that is."""

    stage: int
    parts: tuple[str, ...]  # of PARTS
    trainable: int
    total: int

    def describe(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        parts = ", ".join(self.parts)
        counts = f"{self.trainable:,} of {self.total:,} parameters ({share:.1f}%)"
        return f"stage {self.stage} trains {parts}: {counts}"


def stage_parts(model: P2MedModel, stage: int) -> tuple[str, ...]:
    """The parts stage `stage` trains for this model."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}; got {stage}")
    lora = () if model.config.merged else ("lora",)
    llm = (*lora, "llm_base") if not model.config.llm.pretrained else lora
    if stage == 1:
        return llm
    if stage == 2:
        vision = () if model.config.vision.pretrained else ("vision",)
        return (*vision, "resampler", "alignment")
    return (*llm, "resampler", "alignment")


def part_parameters(model: P2MedModel) -> dict[str, list[nn.Parameter]]:
    """Every parameter of the model, by part."""
    parts: dict[str, list[nn.Parameter]] = {part: [] for part in PARTS}
    parts["vision"] = list(model.vision.parameters())
    parts["resampler"] = list(model.resampler.parameters())
    parts["alignment"] = list(model.alignment.parameters())
    for name, param in model.llm.named_parameters():
        parts["lora" if "lora_" in name else "llm_base"].append(param)
    return parts


def apply_stage(model: P2MedModel, stage: int) -> StagePlan:
    """Set `requires_grad` for stage `stage`: on in the parts it trains, off elsewhere; the
    model's config records the parts as trained (checkpoints then keep their weights)."""
    parts = stage_parts(model, stage)
    model.config = model.config.replace(trained=tuple(sorted({*model.config.trained, *parts})))
    trainable = total = 0
    for part, params in part_parameters(model).items():
        for param in params:
            param.requires_grad_(part in parts)
            total += param.numel()
            trainable += param.numel() if part in parts else 0
    return StagePlan(stage, parts, trainable, total)
