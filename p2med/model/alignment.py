"""A direct vision signal for stages 2 and 3: each image's latents predict the findings its
report states (multi-label), as report-derived labels train chest X-ray classifiers
(CheXpert's labeler; Irvin et al. 2019).

A vision encoder trained from scratch (`tiny`) learns little through the language-model
loss alone: the LLM learns the reports' prior first and the gradient reaching the image
stays weak (../shared/FIELD_NOTES.md). A CLIP-style contrastive image-report loss came
first: at 8 pairs per rank over paraphrased reports it left the latents no more telling
than a random encoder's. Labels give every image a signal of its own; with the
resampler's region prior (`resampler.region_means`) it teaches lesion location within the
quickstart's budget. The labels are read from the reports by the platform (a vocabulary
extractor on synthetic data, a clinical labeler on real data); the model only sees a
multi-hot vector per image.

How much of it a model has is its config's `alignment`: `slots` (the head, and its verdict
fed to the LLM: `FindingHead`), `head` (the head's loss trains the resampler and the vision
encoder, but the LLM reads the latents alone: the paper's architecture with an auxiliary
loss) or `none` (the paper's architecture: `NoAlignment`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Verdict(NamedTuple):
    """What the finding head makes of P images' latents. A named tuple: DeepSpeed ZeRO-3
    finds the tensors a module returns in tuples, lists and dicts only, and re-gathers
    the module's parameters for the backward pass through them."""

    logits: torch.Tensor | None  # (P, K); None without a head
    hinted: torch.Tensor  # (P, N + K, D), (P, N, D) without slots: what the LLM reads for each image


class FindingHead(nn.Module):
    """Logits of K findings from an image's N latents of width D. The latents are
    flattened rather than pooled: which latent saw what is where the location lies.

    The head's verdict also goes to the LLM (`hinted`), as diagnosis-driven prompts do in
    report generation (PromptMRG; Jin et al. 2024): the latents carry the findings, but an
    LLM learns to read "which latent lit up" slowly. Two forms: the K-dim verdict embedded
    and added to every latent, and K verdict slots after the latents, one per finding,
    which the LLM reads as it reads words: slot k = v_k * (identity_k + presence_k). The
    slots made the reports follow the head; the added verdict alone, even at the latents'
    own scale, did not. Training starts presence_k at the embedding of finding k's words
    (`ground_slots`).

    v_k is the head's decision, 1 if its probability is above 0.5 else 0, with the
    probability's gradient (straight-through). With the probability itself the LLM learned
    on training images, where the head is sure (p near 0 or 1), and on new images read a
    hesitant p well below 0.5 as "present": a quickstart model wrote interstitial opacities
    into most bench bronchiolitis reports whose head said no, and its reports scored lower
    than with decisions. The slots of findings the head does not see are blank (zero), so
    the LLM reads only those it does see; with identity_k there (slot = identity_k + v_k *
    presence_k) a seen finding differed from an unseen one by a fraction of its vector, and
    the LLM wrote the neighbouring lobe or dropped a second finding; blank slots made the
    reports agree with the head more often and raised the quickstart's findings F1.
    Measurements: docs/performance.md, Model quality."""

    def __init__(self, latents: int, width: int, labels: int, feeds_llm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.classify = nn.Linear(latents * width, labels)
        self.feeds_llm = feeds_llm
        if not feeds_llm:  # alignment `head`: the LLM reads the latents alone
            return
        self.hint = nn.Linear(labels, width)
        # one verdict slot per finding after the latents: which finding (identity) and how
        # the report names it (presence), blank where the head does not see it
        self.identity = nn.Parameter(torch.randn(labels, width) * 0.02)
        self.presence = nn.Parameter(torch.randn(labels, width) * 0.02)
        # zero at init: the hint starts silent and the LLM's loss grows it
        nn.init.zeros_(self.hint.weight)
        nn.init.zeros_(self.hint.bias)

    def forward(self, latents: torch.Tensor) -> Verdict:
        """latents (P, N, D) -> the logits (P, K) and what the LLM reads for each image
        (P, N + K, D): the latents plus the embedded verdict, then the K verdict slots (the
        latents as they are when the head does not feed the LLM). The LLM's loss reaches
        the head through the verdict too (stage 3 tunes it that way). One call for both:
        under ZeRO-3 the head's own parameters are gathered for its calls only."""
        logits = self.classify(self.norm(latents).flatten(1))
        if not self.feeds_llm:
            return Verdict(logits, latents)
        probs = torch.sigmoid(logits)  # (P, K)
        decided = (probs > 0.5).to(probs.dtype) + probs - probs.detach()  # 0/1, d/dp = 1
        slots = decided[..., None] * (self.identity + self.presence)  # (P, K, D)
        hinted = torch.cat([latents + self.hint(decided)[:, None, :], slots.to(latents.dtype)], 1)
        return Verdict(logits, hinted)

    @torch.no_grad()
    def ground_slots(self, words: torch.Tensor) -> None:
        """Start each finding's presence vector at the embedding of the words that name it
        (K, D), so that a slot the head lights up reads like the words the report must
        write; the LLM then has a phrase to copy rather than a code to learn."""
        if not self.feeds_llm:
            raise ValueError("this finding head has no verdict slots (alignment `head`)")
        if words.shape != self.presence.shape:
            raise ValueError(
                f"words must be (labels, width) = {tuple(self.presence.shape)}; got {tuple(words.shape)}"
            )
        self.presence.copy_(words.to(self.presence.dtype))


class NoAlignment(nn.Module):
    """Alignment `none`: the LLM reads the resampled latents as they are, with no finding
    head, so there is no finding loss; the resampler (and a vision encoder trained from
    scratch) learn through the language-model loss alone, as in the paper."""

    def forward(self, latents: torch.Tensor) -> Verdict:
        return Verdict(None, latents)


def alignment_module(kind: str, latents: int, width: int, labels: int) -> nn.Module:
    """The module of alignment `kind` for N `latents` of `width` D and K finding `labels`."""
    if kind == "none":
        return NoAlignment()
    if kind in ("head", "slots"):
        return FindingHead(latents, width, labels, feeds_llm=kind == "slots")
    raise ValueError(f"alignment must be none, head or slots; got {kind!r}")


def finding_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits (P, K) against multi-hot targets (P, K) over the
    labelled images: rows of NaN targets (an image without a report) carry no loss. With
    none labelled, a zero that still reaches every weight of the head (ZeRO-2 needs it)."""
    labelled = ~targets.isnan().any(1)
    if not labelled.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[labelled], targets[labelled].to(logits.dtype))
