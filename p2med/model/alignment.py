"""A direct vision signal for stage 2: CLIP-style contrastive loss between an image and its
report (Radford et al. 2021, which is how CLIP encoders are made).

A vision encoder trained from scratch (`tiny`) learns little through the language-model
loss alone: the LLM learns the reports' prior first and the gradient reaching the image
stays weak (../shared/FIELD_NOTES.md). Here each image's latents and its report's LLM
hidden states are pooled, projected into a joint space and pulled together, while other
reports of the batch are pushed away; identical reports in a batch all count as matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """Projections of pooled image latents and pooled report states (both D wide) into a
    joint space, and a learned temperature."""

    def __init__(self, width: int, joint: int = 256) -> None:
        super().__init__()
        self.image = nn.Linear(width, joint)
        self.text = nn.Linear(width, joint)
        # shape (1,), not a scalar: DeepSpeed broadcasts parameters as bytes, which 0-dim ones cannot be
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def forward(
        self, image_latents: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Similarity logits (B images, B reports).

        Args:
            image_latents: (B, N, D), one image per sample.
            text_states: (B, L, D) the LLM's last hidden states over each report.
            text_mask: (B, L), 1 on report tokens.
        """
        weights = text_mask.unsqueeze(-1).to(text_states.dtype)
        text = (text_states * weights).sum(1) / weights.sum(1).clamp(min=1)
        image = F.normalize(self.image(image_latents.mean(1)), dim=-1)
        text = F.normalize(self.text(text), dim=-1)
        return self.logit_scale.exp().clamp(max=100) * image @ text.T


def contrastive_loss(logits: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over image-report logits (B, B); reports with the same token
    ids (B, L) are all correct partners of each other's images."""
    same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)
    image_to_text = -(targets * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2
