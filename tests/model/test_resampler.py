"""The perceiver resampler: fixed output size, masked tokens ignored."""

from __future__ import annotations

import torch

from p2med.model.config import ResamplerConfig
from p2med.model.resampler import PerceiverResampler


def test_masked_tokens_change_nothing_and_any_count_gives_n_latents():
    torch.manual_seed(0)
    resampler = PerceiverResampler(
        ResamplerConfig(latents=8, depth=2, heads=4), vision_width=32, llm_width=48
    )
    tokens = torch.randn(2, 50, 32)
    mask = torch.ones(2, 50, dtype=torch.long)
    out = resampler(tokens, mask)
    assert out.shape == (2, 8, 48)
    padded = torch.cat([tokens, torch.randn(2, 30, 32) * 100], dim=1)  # junk behind the mask
    padded_mask = torch.cat([mask, torch.zeros(2, 30, dtype=torch.long)], dim=1)
    torch.testing.assert_close(resampler(padded, padded_mask), out, atol=1e-5, rtol=1e-5)
    assert resampler(tokens[:, :7], mask[:, :7]).shape == (2, 8, 48)
    assert not torch.allclose(resampler(padded, torch.ones_like(padded_mask)), out)  # the mask matters
