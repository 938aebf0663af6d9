"""Perceiver resampler: any number of visual tokens -> a fixed number of latents.

After Flamingo (Alayrac et al. 2022) and open_flamingo's `PerceiverResampler`: learned
latents attend to the visual tokens and to themselves, layer after layer; a linear
projection then maps them to the LLM's width, so each image fills N embedding slots. Unlike
Flamingo, each latent starts from the mean of its own region of the image (`region_means`,
`ResamplerConfig.region_prior`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from p2med.model.config import ResamplerConfig


class LatentCrossAttention(nn.Module):
    """Latents (B, N, D) attend to [visual tokens (B, T, D); latents], honouring a key mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"resampler width {width} is not divisible by its {heads} heads")
        self.heads = heads
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, media_mask: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        keys = torch.cat([media, latents], dim=1)
        keep = torch.cat([media_mask.bool(), media_mask.new_ones(latents.shape[:2], dtype=torch.bool)], dim=1)
        q = rearrange(self.to_q(latents), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(keys), "b t (two h d) -> two b h t d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PerceiverResampler(nn.Module):
    """Visual tokens (B, T, Dv) with mask (B, T) -> latents projected to the LLM (B, N, D_llm)."""

    def __init__(self, config: ResamplerConfig, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(torch.randn(config.latents, vision_width) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    LatentCrossAttention(vision_width, config.heads),
                    nn.Sequential(
                        nn.LayerNorm(vision_width),
                        nn.Linear(vision_width, config.ff_mult * vision_width, bias=False),
                        nn.GELU(),
                        nn.Linear(config.ff_mult * vision_width, vision_width, bias=False),
                    ),
                ]
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(vision_width)
        self.projection = nn.Linear(vision_width, llm_width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        if self.config.region_prior:
            latents = latents + region_means(tokens, mask, len(self.latents))
        for attention, feed_forward in self.layers:
            latents = latents + attention(tokens, latents, mask)
            latents = latents + feed_forward(latents)
        return self.projection(self.norm(latents))


def region_means(tokens: torch.Tensor, mask: torch.Tensor, regions: int) -> torch.Tensor:
    """The mean of each of `regions` consecutive runs of the unmasked tokens (B, T, D) ->
    (B, regions, D); a run with no token gives zeros. Tokens come in reading order (rows of
    an X-ray's patch grid, slice after slice of a CT), so each run is one place in the image.

    Why: learned latents attend almost uniformly at first, so every latent starts as the
    same average of the image and where a lesion lies is lost; learning to attend
    selectively from there took the from-scratch `tiny` encoder hundreds of steps more than
    the quickstart has. Starting each latent at its own region keeps location from step 0."""
    mask = mask.long()
    rank = mask.cumsum(1) - 1  # (B, T) index among the unmasked tokens
    count = mask.sum(1, keepdim=True).clamp(min=1)
    region = (rank.clamp(min=0) * regions // count).clamp(max=regions - 1)
    members = F.one_hot(region, regions).to(tokens.dtype) * mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, R)
    sums = members.transpose(1, 2) @ tokens  # (B, R, D)
    return sums / members.sum(1).clamp(min=1).unsqueeze(-1)
