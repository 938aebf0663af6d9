"""The perceiver resampler: fixed output size, masked tokens ignored."""

from __future__ import annotations

import torch

from p2med.model.config import ResamplerConfig
from p2med.model.resampler import PerceiverResampler, region_means


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


def test_region_means_average_consecutive_runs_of_the_unmasked_tokens():
    tokens = torch.arange(12.0).reshape(1, 6, 2)  # token t = (2t, 2t + 1)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1]])  # token 2 is padding
    # 5 real tokens in 2 runs: tokens 0, 1, 3 (ranks 0-2) and 4, 5 (ranks 3-4)
    expected = torch.tensor([[[(0 + 2 + 6) / 3, (1 + 3 + 7) / 3], [(8 + 10) / 2, (9 + 11) / 2]]])
    torch.testing.assert_close(region_means(tokens, mask, 2), expected)
    assert region_means(tokens[:, :1], mask[:, :1], 3)[0, 1:].abs().sum() == 0  # runs without tokens


def test_each_latent_starts_from_its_own_region():
    """Moving a lesion between regions moves the latent that changes, before any training:
    the prior that lets a from-scratch encoder tell lobes apart from the first steps."""
    torch.manual_seed(0)
    resampler = PerceiverResampler(ResamplerConfig(latents=4, depth=1, heads=2), 8, 8)
    blank = torch.zeros(1, 16, 8)
    top, bottom = blank.clone(), blank.clone()
    top[0, 1] = bottom[0, 13] = 5.0  # the same "lesion" token in region 0 or region 3
    mask = torch.ones(1, 16, dtype=torch.long)
    moved_top = (resampler(top, mask) - resampler(blank, mask)).norm(dim=-1)[0]
    moved_bottom = (resampler(bottom, mask) - resampler(blank, mask)).norm(dim=-1)[0]
    assert moved_top.argmax() == 0 and moved_bottom.argmax() == 3
