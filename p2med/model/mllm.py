"""P2Med-MLLM: vision encoder -> perceiver resampler -> LLaMA (with LoRA), interleaved.

model = presets.tiny(tokenizer)
out = model(input_ids, attention_mask, labels, Images.from_batch(batch))
out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from peft import PeftModel
from torch import nn
from transformers import LlamaForCausalLM
from transformers.utils import ModelOutput

from p2med.model.alignment import alignment_module, finding_loss
from p2med.model.config import ModelConfig
from p2med.model.interleave import (
    IGNORE_INDEX,
    MODALITIES,
    Images,
    Interleaved,
    expanded_length,
    interleave,
)
from p2med.model.resampler import PerceiverResampler
from p2med.model.vision import VisionEncoder


@dataclass
class P2MedOutput(ModelOutput):
    """What `P2MedModel.forward` returns; the losses are None where no targets were given."""

    loss: torch.Tensor | None = None  # next-token loss
    logits: torch.Tensor | None = None  # (B, L', V), without labels only
    finding_loss: torch.Tensor | None = None  # the direct vision signal of stages 2 and 3


class P2MedModel(nn.Module):
    """The whole model. `llm` is a peft model with LoRA, or a plain LLaMA once merged;
    `alignment` is what the config's `alignment` calls for: the finding head, the direct
    vision signal of stages 2 and 3 (with `slots`, also the verdict every image's latents
    carry to the LLM), or nothing between the resampler and the LLM (`none`)."""

    def __init__(
        self,
        config: ModelConfig,
        vision: VisionEncoder,
        resampler: PerceiverResampler,
        llm: PeftModel | LlamaForCausalLM,
        image_token_id: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision
        self.resampler = resampler
        self.llm = llm
        self.alignment = alignment_module(
            config.alignment, config.resampler.latents, llm.config.hidden_size, config.finding_labels
        )
        self.image_token_id = image_token_id
        # where the model is and in what dtype, read without touching a parameter (under
        # ZeRO-3 a parameter outside its module's call is an empty partition)
        self.register_buffer("placement", torch.zeros(1), persistent=False)
        # Set for ZeRO-3 training: every rank then encodes an image of each kind on every
        # step, a blank one for a kind its batch lacks, since ZeRO-3 gathers each module's
        # parameters when it is called, in a collective every rank must join in the same order
        self.same_calls_on_every_rank = False

    @property
    def context_length(self) -> int:
        return self.llm.config.max_position_embeddings

    @property
    def image_slots(self) -> int:
        """Positions one image takes in the LLM's input: N latents, and K verdict slots with
        alignment `slots`."""
        slots = self.config.finding_labels if self.config.alignment == "slots" else 0
        return self.config.resampler.latents + slots

    @torch.no_grad()
    def ground_verdict_slots(self, phrases: list[str], tokenizer: Any) -> None:
        """Start the finding head's verdict slots at the mean token embedding of each
        finding's phrase (`phrases`: one per label, in label order), e.g. "consolidation in
        the right upper lobe"; see `FindingHead.ground_slots`."""
        if len(phrases) != self.config.finding_labels:
            raise ValueError(
                f"need one phrase per finding label ({self.config.finding_labels}); got {len(phrases)}"
            )
        embed = self.llm.get_input_embeddings()
        words = [
            embed(torch.tensor(tokenizer(p, add_special_tokens=False).input_ids, device=self.device))
            for p in phrases
        ]
        self.alignment.ground_slots(torch.stack([w.mean(0) for w in words]))

    def enable_gradient_checkpointing(self) -> None:
        """Keep only each transformer layer's input in the forward pass and recompute the
        rest in the backward pass, in the LLM and in CLIP: activation memory then grows with
        layers x tokens x width instead of with every intermediate, for about a third more
        compute. transformers' default, non-reentrant (torch's recommended kind), so frozen
        embeddings under LoRA need no inputs that require grad."""
        for transformer in (self.llm, self.vision.clip):
            transformer.activation_checkpointing_enable()

    def use_attention(self, kind: str) -> None:
        """Run the LLM's and CLIP's attention with transformers' `kind` (`attn_implementation`:
        sdpa, eager, flash_attention_2, ...). A choice of kernel, not of weights, so it is not
        saved with the model. Raises ImportError when the kernel's package is missing."""
        for transformer in (self.llm, self.vision.clip):
            transformer.set_attn_implementation(kind)

    def encode_images(self, images: Images) -> torch.Tensor:
        """Images -> what the LLM reads for them (P, N + K, D): their latents with the
        finding head's verdict (`Verdict.hinted`), in placeholder reading order."""
        return self.alignment(self._resampled(images)).hinted

    def _resampled(self, images: Images) -> torch.Tensor:
        """Images -> resampled latents in the LLM's width (P, N, D), in placeholder reading order.

        An encoder runs only on images of its kind, never on an empty batch: on CUDA in
        bf16, attention over no rows returns None, not an empty tensor. When training on a
        batch that lacks a kind, the latents carry a zero-weight term of every trainable
        parameter of the vision path (`_vision_anchor`), so that in distributed training
        every trainable parameter gets a gradient on every rank (DeepSpeed ZeRO-2 reduces
        gradients in buckets that must match across ranks), whatever mix of X-rays, CTs
        and text its batch holds. With `same_calls_on_every_rank` (ZeRO-3) a blank image
        of each missing kind is encoded instead, its latents added times zero."""
        shown = [kind for kinds in images.kinds for kind in kinds]
        blanks = (
            self.same_calls_on_every_rank and torch.is_grad_enabled() and bool(self._trainable_vision_path())
        )
        encoded = {
            kind: self.resampler(
                *self.vision(getattr(images, kind) if kind in shown else self._blank(kind), kind)
            )
            for kind in MODALITIES
            if kind in shown or blanks
        }
        taken = dict.fromkeys(encoded, 0)
        picked = []
        for kind in shown:
            picked.append(encoded[kind][taken[kind]])
            taken[kind] += 1
        if picked:
            latents = torch.stack(picked)
        else:
            shape = (0, self.config.resampler.latents, self.resampler.projection.out_features)
            latents = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if blanks:
            latents = latents + sum(encoded[kind].sum() for kind in MODALITIES if kind not in shown) * 0.0
        elif len(encoded) < len(MODALITIES) and torch.is_grad_enabled():
            latents = latents + self._vision_anchor()
        return latents

    def _trainable_vision_path(self) -> list[nn.Parameter]:
        return [p for p in (*self.vision.parameters(), *self.resampler.parameters()) if p.requires_grad]

    def _blank(self, kind: str) -> torch.Tensor:
        """One black image of `kind` at the model's input size: (1, S, S) or (1, D, H, W)."""
        v = self.config.vision
        shape = (1, v.xray_size, v.xray_size) if kind == "xray" else (1, v.ct_slices, v.ct_size, v.ct_size)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _vision_anchor(self) -> torch.Tensor:
        """A zero that depends on every trainable parameter of the encoder and resampler."""
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return sum((p.sum() for p in self._trainable_vision_path()), zero) * 0.0

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        images: Images | None,
        align: Literal["right", "left"] = "right",
    ) -> Interleaved:
        """Token ids (B, L) with `<image>` placeholders + images -> the LLM's input.

        Raises:
            ValueError: an empty batch or sample, placeholders and images that do not pair
                up, images of the wrong shape, or a sequence longer than the LLM's context.
        """
        latents = self._resampled(self._checked(input_ids, attention_mask, images))
        return self._interleaved(input_ids, attention_mask, labels, self.alignment(latents).hinted, align)

    def embed_encoded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoded: torch.Tensor,
        align: Literal["right", "left"] = "right",
    ) -> Interleaved:
        """`embed` for images encoded elsewhere: `encoded` (P, N + K, D) is what
        `encode_images` returned for the batch's images, in placeholder reading order (the
        serving app encodes in one deployment and generates in another).

        Raises:
            ValueError: as `embed`, or encodings that do not match the placeholders or this model.
        """
        self._check_text(input_ids, attention_mask)
        placeholders = int((input_ids == self.image_token_id).sum())
        expected = (placeholders, self.image_slots, self.llm.config.hidden_size)
        if tuple(encoded.shape) != expected:
            raise ValueError(
                f"encoded images must be (placeholders, slots, width) = {expected}; "
                f"got {tuple(encoded.shape)}"
            )
        embed = self.llm.get_input_embeddings()
        encoded = encoded.to(device=self.device, dtype=self.dtype)
        return interleave(input_ids, attention_mask, None, encoded, self.image_token_id, embed, align)

    def _checked(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Images | None
    ) -> Images:
        """The batch's images (none when not given), once the batch is known to be well formed."""
        self._check_text(input_ids, attention_mask)
        images = images or Images.none(len(input_ids))
        images.check((input_ids == self.image_token_id).sum(1).tolist())
        return images

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Raise ValueError unless the ids make a non-empty batch of non-empty rows that fits
        the LLM's context once every image is expanded."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, L) with L > 0; got {tuple(input_ids.shape)}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)} in shape"
            )
        empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"sample {empty[0]} is empty: an empty prompt gives the model nothing to read")
        length = expanded_length(input_ids, self.image_token_id, self.image_slots)
        if length > self.context_length:
            raise ValueError(
                f"the sequence needs {length} positions (each image takes {self.image_slots}) "
                f"but the LLM's context is {self.context_length}; shorten the prompt or max_length"
            )

    def _interleaved(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        hinted: torch.Tensor,
        align: Literal["right", "left"] = "right",
    ) -> Interleaved:
        """The text's embeddings with what the LLM reads for each image (P, N + K, D) in its slots."""
        embed = self.llm.get_input_embeddings()
        return interleave(input_ids, attention_mask, labels, hinted, self.image_token_id, embed, align)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        images: Images | None = None,
        findings: torch.Tensor | None = None,
        read_text: bool = True,
    ) -> P2MedOutput:
        """Without `labels`: the logits (B, L', V). With `labels` (B, L): the mean next-token
        loss over the labelled text positions instead (no logits). With `findings` (P, K),
        multi-hot per image in reading order (NaN rows: unlabelled), also the `finding_loss`
        of the same latents. `read_text=False` encodes the images only and returns their finding loss
        alone, without running the LLM (stage 2's vision steps)."""
        if not read_text and findings is None:
            raise ValueError("read_text=False computes the finding loss only, so it needs findings")
        if findings is not None and not self.has_finding_head:
            raise ValueError("this model has no finding head (alignment none), so no finding loss")
        verdict = self.alignment(self._resampled(self._checked(input_ids, attention_mask, images)))
        if not read_text:
            # the weights only the LLM's loss trains (hint, slots) still get a (zero) gradient
            unused = verdict.hinted.sum() * 0.0
            return P2MedOutput(finding_loss=self._finding_loss(verdict.logits, findings) + unused)
        x = self._interleaved(input_ids, attention_mask, labels, verdict.hinted)
        if x.labels is not None:
            result = P2MedOutput(loss=self._next_token_loss(x))
        else:
            out = self.llm(
                inputs_embeds=x.inputs_embeds,
                attention_mask=x.attention_mask,
                position_ids=x.position_ids,
                use_cache=False,
            )
            result = P2MedOutput(logits=out.logits)
        if findings is not None:
            result.finding_loss = self._finding_loss(verdict.logits, findings)
        return result

    def _next_token_loss(self, x: Interleaved) -> torch.Tensor:
        """The mean next-token loss over x's labelled positions, with the LM head applied at
        those positions alone: the logits of every position, (B, L', V), are a real share of
        the tiny model's training step (a 4,096-token head on a 256-wide, 4-layer LLaMA;
        docs/performance.md), and prompts and image slots are no targets. With no labelled
        position: a zero that still reaches every weight (ZeRO reduces the gradients of all
        of them)."""
        causal = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        hidden = causal.model(
            inputs_embeds=x.inputs_embeds,
            attention_mask=x.attention_mask,
            position_ids=x.position_ids,
            use_cache=False,
        ).last_hidden_state
        targets = x.labels[:, 1:]  # position t predicts token t + 1
        labelled = targets != IGNORE_INDEX
        logits = causal.lm_head(hidden[:, :-1][labelled])  # (T, V)
        if not len(logits):
            return causal.lm_head(hidden[:, :1]).sum() * 0.0
        return nn.functional.cross_entropy(logits.float(), targets[labelled])

    def _finding_loss(self, logits: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """The head's logits (P, K), findings (P, K) multi-hot or NaN -> the finding head's loss."""
        if findings.shape != (len(logits), self.config.finding_labels):
            raise ValueError(
                f"findings must be (images, {self.config.finding_labels}) = "
                f"({len(logits)}, {self.config.finding_labels}); got {tuple(findings.shape)}"
            )
        return finding_loss(logits, findings)

    @property
    def has_finding_head(self) -> bool:
        return self.config.alignment != "none"

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype
