"""The loss of one training step of a stage, on one batch of stage-dataset tensors. Free
of Ray: the training loop runs it on Ray Train workers, `bench/gpu_check.py` on a bare GPU."""

from __future__ import annotations

from typing import Any

import torch

from p2med.model.batch import ATTENTION_MASK, INPUT_IDS, LABELS, TOKEN_COLUMNS
from p2med.model.interleave import IGNORE_INDEX, Images


def stage_loss(
    engine: Any,
    batch: dict[str, torch.Tensor],
    stage: int,
    alignment_weight: float,
    vision_only: bool = False,
    micro_batches: int = 1,
) -> torch.Tensor:
    """The stage's loss on one batch: the language-model loss, plus in stages 2 and 3 the
    finding loss of its images (each labelled by its own report); `vision_only` (stage 2's
    vision steps): the finding loss alone.

    With `micro_batches` > 1 the rows, sorted by length, run through the model in that many
    groups, each padded only to its own longest row, and the groups' losses are weighted
    back into the whole batch's means: the same loss and gradient, less padding."""
    if vision_only:
        batch = trimmed(batch)
        images, findings = Images.from_batch(batch), Images.findings_from_batch(batch)
        return engine(
            batch[INPUT_IDS], batch[ATTENTION_MASK], images=images, findings=findings, read_text=False
        ).finding_loss
    with_findings = stage > 1 and alignment_weight > 0
    parts = [
        _summed_losses(engine, part, stage, with_findings)
        for part in length_sorted_parts(batch, micro_batches)
    ]
    text_loss, text_count, finding_loss, finding_count = (sum(values) for values in zip(*parts, strict=True))
    loss = text_loss / max(text_count, 1)
    if with_findings:
        loss = loss + alignment_weight * finding_loss / max(finding_count, 1)
    return loss


def length_sorted_parts(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """The batch's rows sorted by text length and cut into `parts` groups (fewer when the
    batch is smaller), each trimmed of the padding columns none of its rows uses."""
    if parts == 1:
        return [trimmed(batch)]
    order = batch[ATTENTION_MASK].sum(1).argsort(stable=True)
    return [trimmed({key: value[rows] for key, value in batch.items()}) for rows in order.chunk(parts)]


def _summed_losses(
    engine: Any, batch: dict[str, torch.Tensor], stage: int, with_findings: bool
) -> tuple[torch.Tensor, int, torch.Tensor | float, int]:
    """(language-model loss summed over the batch's target tokens, their count, finding loss
    summed over its labelled images, their count): the model returns means, which weighted
    by their counts add up across micro-batches."""
    ids, mask, labels = batch[INPUT_IDS], batch[ATTENTION_MASK], batch[LABELS]
    targets = int((labels[:, 1:] != IGNORE_INDEX).sum())  # the LLM predicts each from the one before
    images = Images.none(len(ids)) if stage == 1 else Images.from_batch(batch)
    findings = Images.findings_from_batch(batch) if with_findings else None
    out = engine(ids, mask, labels, images, findings)
    text = out.loss * targets  # no targets (all truncated): the model's loss is a connected zero
    if findings is None:
        return text, targets, 0.0, 0
    labelled = int((~findings.isnan().any(1)).sum())
    # with no labelled image the model's finding loss is already such a zero
    return text, targets, out.finding_loss * max(labelled, 1), labelled


def trimmed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the padding columns that no row uses: stage datasets pad every row
    to max_length, and the LLM's cost grows with the longest row it is given."""
    length = int(batch[ATTENTION_MASK].sum(1).max())
    return {key: value[:, :length] if key in TOKEN_COLUMNS else value for key, value in batch.items()}
