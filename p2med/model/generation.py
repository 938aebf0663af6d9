"""Batched generation with a KV cache over the interleaved image-text prefix.

    ids, mask = encode_prompts(tokenizer, ["<image>\\nWrite the report."])
    texts = generate(model, tokenizer, ids, mask, images, GenerationSettings(max_new_tokens=128))
    for deltas in stream(model, tokenizer, ids, mask, images): print(deltas[0] or "", end="")

The prefix (text embeddings with image latents in their slots) is left-padded so that every
row ends at the same position; one forward pass fills the cache, then each step feeds one
token per row. Sampling never picks a token the model cannot mean (pad, `<image>`, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tokenizers.decoders import DecodeStream
from transformers import DynamicCache, PreTrainedTokenizerBase

from p2med.model.interleave import Images
from p2med.model.mllm import P2MedModel


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    """0: greedy; above 0: sample from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    stop_token_ids: tuple[int, ...] = ()
    """Besides the tokenizer's `</s>`."""
    seed: int | None = None
    use_cache: bool = True
    """False recomputes the whole sequence each step (a baseline for benchmarks)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1; got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1; got {self.temperature}, {self.top_p}"
            )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> left-padded input_ids and attention_mask (B, L).

    Raises:
        ValueError: no prompts, or an empty one.
    """
    if not prompts:
        raise ValueError("no prompts to generate from")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty")
    rows = [tokenizer(p).input_ids for p in prompts]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row)
        mask[i, length - len(row) :] = 1
    return ids, mask


@torch.inference_mode()
def generate_tokens(
    model: P2MedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: Images | torch.Tensor | None,
    settings: GenerationSettings,
) -> Iterator[torch.Tensor]:
    """Yields the next token of every row (B,) per step; a row that has stopped yields -1.

    `images`: the batch's images, or their encodings (P, N + K, D) from `encode_images`.
    The stop token itself is not yielded. Stops when every row has stopped or after
    `max_new_tokens` steps.
    """
    llm = model.llm
    ids, mask = input_ids.to(model.device), attention_mask.to(model.device)
    if isinstance(images, torch.Tensor):
        prefix = model.embed_encoded(ids, mask, images, align="left")
    else:
        prefix = model.embed(ids, mask, None, images, align="left")
    room = model.context_length - prefix.inputs_embeds.shape[1]
    if room < 1:
        raise ValueError(f"the prompt fills the LLM's context of {model.context_length} positions")
    steps = min(settings.max_new_tokens, room)
    banned = _banned_ids(model, tokenizer)
    stops = torch.tensor(sorted({tokenizer.eos_token_id, *settings.stop_token_ids}), device=model.device)
    generator = (
        torch.Generator(model.device).manual_seed(settings.seed) if settings.seed is not None else None
    )
    embeds, mask, positions = prefix.inputs_embeds, prefix.attention_mask, prefix.position_ids
    cache = DynamicCache(config=llm.config) if settings.use_cache else None
    out = llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=settings.use_cache,
        logits_to_keep=1,
    )
    done = torch.zeros(len(embeds), dtype=torch.bool, device=model.device)
    for _ in range(steps):
        logits = out.logits[:, -1].float()
        logits[:, banned] = float("-inf")
        token = _pick(logits, settings, generator)
        done |= torch.isin(token, stops)
        if done.all():
            return
        yield token.masked_fill(done, -1)
        step = token[:, None].masked_fill(done[:, None], tokenizer.pad_token_id)
        mask = torch.cat([mask, (~done[:, None]).long()], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if settings.use_cache:
            out = llm(
                input_ids=step,
                attention_mask=mask,
                position_ids=positions[:, -1:],
                cache=out.cache,
                use_cache=True,
            )
        else:
            embeds = torch.cat([embeds, llm.get_input_embeddings()(step)], dim=1)
            out = llm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
            )


def generate(
    model: P2MedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: Images | torch.Tensor | None = None,
    settings: GenerationSettings = GenerationSettings(),
) -> list[str]:
    """The generated text of every row."""
    rows: list[list[int]] = [[] for _ in range(len(input_ids))]
    for tokens in generate_tokens(model, tokenizer, input_ids, attention_mask, images, settings):
        for row, token in zip(rows, tokens.tolist(), strict=True):
            if token >= 0:
                row.append(token)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def stream(
    model: P2MedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: Images | torch.Tensor | None = None,
    settings: GenerationSettings = GenerationSettings(),
) -> Iterator[list[str | None]]:
    """Yields, per step, the new text of every row: "" when a row has nothing new, None
    once it has stopped. A multi-byte character split across tokens is held back until it
    is whole."""
    rows = [TextStream(tokenizer) for _ in range(len(input_ids))]
    for tokens in generate_tokens(model, tokenizer, input_ids, attention_mask, images, settings):
        yield [
            None if token < 0 else row.add(token) for row, token in zip(rows, tokens.tolist(), strict=True)
        ]


class TextStream:
    """One row's text, token by token: `add` returns the text the token completes.

    Incremental (tokenizers' `DecodeStream`): the cost per token stays flat where decoding
    the whole row again at each token grew with the row (0.2 ms a token at 32 tokens here).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)

    def add(self, token: int) -> str:
        """The new text; "" while the token ends inside a multi-byte character."""
        return self._decoder.step(self._backend, token) or ""


def _pick(
    logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row from logits (B, V): greedy, or sampled with temperature and top-p."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = (
            sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p
        )  # mass before a token already enough
        sorted_probs = sorted_probs.masked_fill(outside, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _banned_ids(model: P2MedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids generation must never produce: padding, `<image>`, `<s>`, `<unk>`."""
    vocab = model.llm.get_output_embeddings().out_features
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id, model.image_token_id}
    return sorted(i for i in ids if i is not None and i < vocab and i != tokenizer.eos_token_id)
