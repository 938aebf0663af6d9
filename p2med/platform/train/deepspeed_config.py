"""The DeepSpeed config of a stage, generated from the typed settings.

The optimizer and scheduler are torch's (passed to `deepspeed.initialize`), not declared
here: a DeepSpeed-declared Adam JIT-builds FusedAdam on CPU, a long wait before the first
step (docs/performance.md, Start-up costs; FIELD_NOTES.md).
"""

from __future__ import annotations

from typing import Any

from p2med.platform.train.settings import DeepSpeedSettings


def deepspeed_config(
    settings: DeepSpeedSettings, batch_size: int, grad_clip: float, bf16: bool
) -> dict[str, Any]:
    """A DeepSpeed config dict: ZeRO stage, micro-batch per worker, clipping, precision."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,  # our own progress lines instead
        "wall_clock_breakdown": False,
    }
    return _merged(config, settings.overrides)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out
