"""Typed settings of a P2Med-MLLM, saved as `p2med_config.json` next to its weights.

Plain dataclasses (the model package imports nothing of the platform); pydantic validates
them where a job config embeds them. `presets` fills them in for `tiny` and `paper`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    """The image encoder: an optional conv stem, then `transformers.CLIPVisionModel`."""

    pretrained: str | None = None
    """Hugging Face CLIP (vision) folder, local or s3://; None: random init from the fields below."""
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    patch_size: int = 16
    """CLIP patch size; 1 when a conv stem makes the patches."""
    stem_channels: tuple[int, ...] = ()
    """Conv stem widths, one stride-2 3x3 conv each; () for none. (32, 64, 128, 128): 16x
    fewer pixels a side."""
    channels: int = 1
    """Input channels CLIP expects (3 for a pretrained CLIP: grayscale is repeated)."""
    image_mean: float = 0.5
    image_std: float = 0.5
    """Pixels in [0, 1] are normalised to (x - mean) / std before the encoder."""
    xray_size: int = 128
    """X-ray side S: 2D input (B, S, S) or (B, C, S, S)."""
    ct_slices: int = 16
    ct_size: int = 64
    """CT input (B, D, H, W) with D = ct_slices, H = W = ct_size."""


@dataclass(frozen=True)
class ResamplerConfig:
    """Perceiver resampler: visual tokens -> `latents` tokens of the LLM's width."""

    latents: int = 32
    """N: positions each `<image>` expands to."""
    depth: int = 2
    heads: int = 4
    ff_mult: int = 2
    region_prior: bool = True
    """Each latent starts at the mean of its own region of the image (`resampler.region_means`)
    plus its learned vector; False: learned vectors alone, as in Flamingo."""


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the LLM (peft)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


@dataclass(frozen=True)
class LLMConfig:
    """The language model: `LlamaForCausalLM`, from a folder or from these sizes."""

    pretrained: str | None = None
    """Hugging Face LLaMA folder, local or s3://; None: random init from the fields below."""
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate_size: int = 688
    max_positions: int = 1024
    lora: LoraConfig = LoraConfig()


@dataclass(frozen=True)
class ModelConfig:
    """A whole P2Med-MLLM."""

    preset: str = "tiny"
    vision: VisionConfig = VisionConfig()
    resampler: ResamplerConfig = ResamplerConfig()
    llm: LLMConfig = LLMConfig()
    dtype: str = "float32"
    """Parameter dtype: float32 on CPU, bfloat16 for the paper preset on GPU."""
    merged: bool = False
    """LoRA merged into the LLM (a serving export); such a model no longer trains LoRA."""
    vocab_size: int = 0
    """Set from the tokenizer when the LLM is built from sizes."""
    finding_labels: int = 15
    """K, the outputs of the finding head: the platform's label space (its vocabulary)."""
    trained: tuple[str, ...] = ()
    """Parts trained so far (`stages`): decides which weights a checkpoint must hold."""
    alignment: str = "slots"
    """How the finding head takes part (`alignment.py`): `slots` (its verdict fed to the
    LLM), `head` (an auxiliary loss only: the paper's architecture) or `none` (no head)."""
    language: str = "en"
    """What most of its training text is written in ("en" / "zh"): stage 2's verdict slots
    start at the findings' words in it, and a served request whose own text does not say
    otherwise is prompted in it."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of `to_dict`; unknown keys are an error naming them."""
        return _build(cls, data, "model config")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    values = {}
    for name, value in data.items():
        kind = fields[name].type  # a string: annotations are postponed
        if kind in _NESTED:
            value = _build(_NESTED[kind], value, f"{where}.{name}")
        elif isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        values[name] = value
    return cls(**values)


_NESTED = {c.__name__: c for c in (VisionConfig, ResamplerConfig, LLMConfig, LoraConfig)}
