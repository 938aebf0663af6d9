"""Interleaving images with text: each `<image>` id expands to N embedding slots.

The tokenizer writes one `<image>` id per image; here each becomes the N latents of its
image, text ids become their token embeddings, and the batch is re-padded to the longest
expanded row. Images are matched to placeholders in reading order: sample 0's from left
to right, then sample 1's, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from p2med.model.batch import INPUT_IDS, findings_column, shown_column

IGNORE_INDEX = -100  # label of positions without loss (PyTorch cross-entropy default)
MODALITIES = ("xray", "ct")


@dataclass(frozen=True)
class Images:
    """The images of a batch: `kinds[b]` names sample b's images ("xray" or "ct") in the
    order of its `<image>` placeholders; `xray` (N2, S, S) or (N2, C, S, S) and `ct`
    (N3, D, H, W) stack them, in [0, 1], in the same reading order."""

    kinds: list[list[str]]
    xray: torch.Tensor | None = None
    ct: torch.Tensor | None = None

    @classmethod
    def none(cls, batch_size: int) -> Images:
        """A text-only batch."""
        return cls([[] for _ in range(batch_size)])

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor]) -> Images:
        """From a training batch (`p2med.model.batch`): `xray` (B, S, S), `ct` (B, D, H, W)
        with `has_xray` and `has_ct` (B,); a sample shows its X-ray before its CT, as its
        prompt does."""
        size = len(batch[INPUT_IDS])
        has = {m: batch.get(shown_column(m), torch.zeros(size)).bool() for m in MODALITIES}
        kinds = [[m for m in MODALITIES if has[m][b]] for b in range(size)]
        stacked = {m: batch[m][has[m]] if has[m].any() else None for m in MODALITIES}
        return cls(kinds, xray=stacked["xray"], ct=stacked["ct"])

    @staticmethod
    def findings_from_batch(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The finding labels (P, K) of a training batch's images, in the reading order of
        `from_batch`, from its `xray_findings` / `ct_findings` (B, K); NaN rows: unlabelled."""
        shown = torch.stack([batch[shown_column(m)].bool() for m in MODALITIES], 1)  # (B, 2)
        labels = torch.stack([batch[findings_column(m)] for m in MODALITIES], 1)  # (B, 2, K)
        return labels[shown]  # row-major: sample by sample, X-ray before CT

    def check(self, placeholders: list[int]) -> None:
        """Raise ValueError unless every sample has as many images as placeholders and
        the stacked tensors hold as many images as `kinds` names."""
        if len(self.kinds) != len(placeholders):
            raise ValueError(
                f"images are given for {len(self.kinds)} samples but the batch has {len(placeholders)}"
            )
        for b, (kinds, count) in enumerate(zip(self.kinds, placeholders, strict=True)):
            if len(kinds) != count:
                raise ValueError(f"sample {b} has {count} <image> placeholders but {len(kinds)} images")
            unknown = set(kinds) - set(MODALITIES)
            if unknown:
                raise ValueError(f"sample {b} names unknown image kinds {sorted(unknown)}; use {MODALITIES}")
        if self.xray is not None and self.xray.dim() not in (3, 4):
            raise ValueError(f"X-ray pixels must be (N, S, S) or (N, C, S, S); got {tuple(self.xray.shape)}")
        if self.ct is not None and self.ct.dim() != 4:
            raise ValueError(f"CT volumes must be (N, D, H, W); got {tuple(self.ct.shape)}")
        for modality in MODALITIES:
            named = sum(k.count(modality) for k in self.kinds)
            tensor = getattr(self, modality)
            given = 0 if tensor is None else len(tensor)
            if named != given:
                raise ValueError(f"the samples name {named} {modality} images but {given} are given")


@dataclass(frozen=True)
class Interleaved:
    """The LLM's input after expansion (L' = longest expanded row)."""

    inputs_embeds: torch.Tensor  # (B, L', D)
    attention_mask: torch.Tensor  # (B, L')
    position_ids: torch.Tensor  # (B, L')
    labels: torch.Tensor | None  # (B, L'), IGNORE_INDEX on images and padding


def interleave(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    latents: torch.Tensor,
    image_token_id: int,
    embed: torch.nn.Module,
    align: Literal["right", "left"] = "right",
) -> Interleaved:
    """Expand every `<image>` id of `input_ids` (B, L) into its image's latents.

    Args:
        latents: (P, N, D), one entry per placeholder in reading order.
        align: "right" pads after the text (training); "left" pads before it, so that every
            row ends at the last position (batched generation).
    """
    is_image = input_ids == image_token_id
    per_token = torch.where(is_image, latents.shape[1], 1)
    ends = per_token.cumsum(1)
    starts = ends - per_token
    row_length = ends[:, -1]
    length = int(row_length.max())
    if align == "left":
        starts = starts + (length - row_length)[:, None]

    batch, dim = input_ids.shape[0], latents.shape[-1]
    token_embeds = embed(input_ids.masked_fill(is_image, 0))  # `<image>` may lie outside the vocabulary
    embeds = token_embeds.new_zeros(batch, length, dim)
    mask = attention_mask.new_zeros(batch, length)
    new_labels = None if labels is None else labels.new_full((batch, length), IGNORE_INDEX)

    rows, cols = (~is_image).nonzero(as_tuple=True)
    targets = starts[rows, cols]
    embeds[rows, targets] = token_embeds[rows, cols]
    mask[rows, targets] = attention_mask[rows, cols]
    if new_labels is not None:
        new_labels[rows, targets] = labels[rows, cols]

    # Row-major: reading order. Done without images too, so that `latents` (P = 0) stays in
    # the graph: the encoders then still get (zero) gradients, as distributed training needs.
    rows, cols = is_image.nonzero(as_tuple=True)
    slots = starts[rows, cols][:, None] + torch.arange(latents.shape[1], device=latents.device)
    embeds[rows[:, None], slots] = latents.to(embeds.dtype)
    mask[rows[:, None], slots] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return Interleaved(embeds, mask, positions, new_labels)


def expanded_length(input_ids: torch.Tensor, image_token_id: int, latents: int) -> int:
    """L' of `interleave` for these ids, computed without encoding any image."""
    images = (input_ids == image_token_id).sum(1)
    return int((input_ids.shape[1] + images * (latents - 1)).max())
