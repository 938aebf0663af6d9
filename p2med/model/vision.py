"""Vision encoder: chest X-rays (2D) and CTs (3D) -> visual tokens for the resampler.

One 2D encoder serves both modalities: `transformers.CLIPVisionModel`, optionally behind
a small convolutional stem (the `tiny` preset: a ViT trained from scratch on a CPU learns
where a lesion is far more slowly than convolutions do). A CT is encoded slice by slice
by the same encoder; a learned slice-position embedding tells the slices apart, and a
learned modality embedding tells X-ray tokens from CT tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from p2med.model.config import VisionConfig

XRAY, CT = 0, 1  # modality ids


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions: (N, C, H, W) -> (N, widths[-1], H / 2^k, W / 2^k).

    Each is normalised over the whole feature map of its image (GroupNorm with one group):
    without it the maps shrink layer by layer at init and CLIP's position embeddings drown
    the image, which then never learns."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
                nn.GroupNorm(1, width),
                nn.GELU(),
            ]
            in_channels = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def clip_config(config: VisionConfig) -> CLIPVisionConfig:
    """The CLIP settings of a randomly initialised encoder (sizes from `config`)."""
    reduction = 2 ** len(config.stem_channels)
    return CLIPVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        image_size=config.xray_size // reduction,
        patch_size=config.patch_size,
        num_channels=config.stem_channels[-1] if config.stem_channels else config.channels,
    )


class VisionEncoder(nn.Module):
    """Images -> visual tokens (N, T, Dv) and their mask (N, T), 1 = a real token."""

    def __init__(self, config: VisionConfig, clip: CLIPVisionModel) -> None:
        super().__init__()
        self.config = config
        self.stem = ConvStem(config.channels, config.stem_channels) if config.stem_channels else None
        self.clip = clip
        width = clip.config.hidden_size
        self.slice_embedding = nn.Parameter(torch.zeros(config.ct_slices, width))
        self.modality_embedding = nn.Parameter(torch.zeros(2, width))
        nn.init.normal_(self.slice_embedding, std=0.02)
        nn.init.normal_(self.modality_embedding, std=0.02)

    @property
    def width(self) -> int:
        return self.clip.config.hidden_size

    def forward(self, pixels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """X-rays or CT volumes (see `encode_xray`, `encode_ct`) -> tokens (N, T, Dv), mask (N, T).

        The model calls the encoder as a module, not through those methods, as DeepSpeed's
        hooks expect; it never calls it on an empty batch (see `P2MedModel._resampled`)."""
        if kind == "xray":
            return self.encode_xray(pixels)
        if kind == "ct":
            return self.encode_ct(pixels)
        raise ValueError(f"image kind {kind!r} does not exist; kinds are xray and ct")

    def encode_xray(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels: (N, S, S) or (N, C, S, S) in [0, 1] -> tokens (N, T, Dv), mask (N, T)."""
        size = self.config.xray_size
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(1)
        if pixels.dim() != 4 or pixels.shape[-2:] != (size, size) or pixels.shape[1] not in (1, 3):
            raise ValueError(
                f"X-ray pixels must be (N, {size}, {size}) or (N, 1|3, {size}, {size}); "
                f"got {tuple(pixels.shape)}"
            )
        tokens = self._encode_2d(pixels) + self.modality_embedding[XRAY]
        return tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.long)

    def encode_ct(self, volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """volumes: (N, D, H, W) in [0, 1] -> tokens (N, D * T, Dv), mask (N, D * T)."""
        c = self.config
        expected = (c.ct_slices, c.ct_size, c.ct_size)
        if volumes.dim() != 4 or tuple(volumes.shape[1:]) != expected:
            raise ValueError(
                f"CT volumes must be (N, {', '.join(map(str, expected))}); got {tuple(volumes.shape)}"
            )
        slices = self._encode_2d(rearrange(volumes, "n d h w -> (n d) 1 h w"))
        slices = rearrange(slices, "(n d) t c -> n d t c", n=volumes.shape[0])
        slices = slices + self.slice_embedding[:, None, :] + self.modality_embedding[CT]
        tokens = rearrange(slices, "n d t c -> n (d t) c")
        return tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.long)

    def _encode_2d(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1|3, H, W) in [0, 1] -> CLIP's normalised last hidden state (N, 1 + patches, Dv)."""
        dtype = self.clip.dtype
        x = ((pixels - self.config.image_mean) / self.config.image_std).to(dtype)
        if x.shape[1] != self.config.channels:
            x = x.mean(1, keepdim=True).expand(-1, self.config.channels, -1, -1)
        if self.stem is not None:
            x = self.stem(x)
        native = self.clip.config.image_size
        out = self.clip(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != native)
        # CLIP applies its final norm to the class token only; every token goes on here, and a
        # parameter without gradient would trouble distributed training
        return self.clip.post_layernorm(out.last_hidden_state)
