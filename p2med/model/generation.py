"""Batched generation with a KV cache over the interleaved image-text prefix.

    ids, mask = encode_prompts(tokenizer, ["<image>\\nWrite the report."])
    texts = generate(model, tokenizer, ids, mask, images, GenerationSettings(max_new_tokens=128))
    for deltas in stream(model, tokenizer, ids, mask, images): print(deltas[0] or "", end="")

The prefix (text embeddings with image latents in their slots) is left-padded so that every
row ends at the same position; one forward pass fills the cache, then each step feeds one
token per row. Sampling never picks a token the model cannot mean (pad, `<image>`, ...).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import torch
from tokenizers.decoders import DecodeStream
from transformers import DynamicCache, PreTrainedTokenizerBase

from p2med.model.interleave import Images, Interleaved
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
    if not settings.use_cache:
        yield from _generate_uncached(model, tokenizer, input_ids, attention_mask, images, settings)
        return
    rows = len(input_ids)
    batch = RunningBatch(model, tokenizer)
    batch.join(list(range(rows)), input_ids, attention_mask, images, [settings] * rows)
    while batch:
        tokens = torch.full((rows,), -1, dtype=torch.long)
        for row, (token, _) in batch.step().items():
            if token is not None:
                tokens[row] = token
        if (tokens < 0).all():
            return
        yield tokens


class RunningBatch:
    """Rows that decode together with one KV cache, joining and leaving between steps
    (continuous batching): each row has its own settings and stops on its own.

        batch = RunningBatch(model, tokenizer)
        batch.join(["a", "b"], ids, mask, encoded, [settings, settings])
        while batch:
            for key, (token, finished) in batch.step().items(): ...
            batch.join(...)  # more rows, at any step
            batch.leave(["a"])  # and rows out, at any step

    A joining row's prefix fills a cache of its own in one forward pass; both caches are
    then left-padded to the longer one and stacked. A row leaves when it stops, and cache
    columns that no remaining row attends to are cut, so the cache stays as long as its
    longest row.
    """

    def __init__(self, model: P2MedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._rows: list[_Row] = []
        self._banned = _banned_ids(model, tokenizer)
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # (B, T)
        self._positions = torch.zeros(0, 1, dtype=torch.long)  # (B, 1): each row's last position
        self._logits = torch.zeros(0, 0)  # (B, V): each row's next-token logits

    def __len__(self) -> int:
        return len(self._rows)

    @torch.inference_mode()
    def join(
        self,
        keys: list[Hashable],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: Images | torch.Tensor | None,
        settings: list[GenerationSettings],
    ) -> None:
        """Add rows (prompts as `encode_prompts` makes them, with their images or encodings
        (P, N + K, D)); each decodes with its own `settings`.

        Raises:
            ValueError: as `P2MedModel.embed`, or a prompt that leaves no room to generate.
        """
        model, device = self.model, self.model.device
        prefix = _prefix(model, input_ids.to(device), attention_mask.to(device), images)
        room = model.context_length - prefix.attention_mask.sum(1)
        if (room < 1).any():
            raise ValueError(f"the prompt fills the LLM's context of {model.context_length} positions")
        out = model.llm(
            inputs_embeds=prefix.inputs_embeds,
            attention_mask=prefix.attention_mask,
            position_ids=prefix.position_ids,
            cache=DynamicCache(config=model.llm.config),
            use_cache=True,
            logits_to_keep=1,
        )
        eos = self.tokenizer.eos_token_id
        for key, row_settings, row_room in zip(keys, settings, room.tolist(), strict=True):
            stops = {eos, *row_settings.stop_token_ids}
            left = min(row_settings.max_new_tokens, row_room)
            self._rows.append(_Row(key, row_settings, _generator(row_settings, device), stops, left))
        logits = _next_logits(out.logits, self._banned)
        if self._cache is None:
            self._cache, self._mask, self._logits = out.cache, prefix.attention_mask, logits
            self._positions = prefix.position_ids[:, -1:]
            return
        length = max(self._mask.shape[1], prefix.attention_mask.shape[1])
        self._cache = DynamicCache(
            ddp_cache_data=[
                (
                    torch.cat([_pad_left(old.keys, length, 2), _pad_left(new.keys, length, 2)]),
                    torch.cat([_pad_left(old.values, length, 2), _pad_left(new.values, length, 2)]),
                )
                for old, new in zip(self._cache.layers, out.cache.layers, strict=True)
            ]
        )
        self._mask = torch.cat(
            [_pad_left(self._mask, length, 1), _pad_left(prefix.attention_mask, length, 1)]
        )
        self._positions = torch.cat([self._positions, prefix.position_ids[:, -1:]])
        self._logits = torch.cat([self._logits, logits])

    @torch.inference_mode()
    def step(self) -> dict[Hashable, tuple[int | None, bool]]:
        """Every row's next token: key -> (token, finished). A row that picked a stop token
        gets (None, True); one that reached its token limit, its last token and True. Rows
        that finished leave the batch; the others take one forward pass."""
        rows = self._rows
        picked = _pick_rows(self._logits, [r.settings for r in rows], [r.generator for r in rows]).tolist()
        results: dict[Hashable, tuple[int | None, bool]] = {}
        staying = []
        for i, (row, token) in enumerate(zip(rows, picked, strict=True)):
            if token in row.stops:
                results[row.key] = (None, True)
                continue
            row.left -= 1
            results[row.key] = (token, row.left == 0)
            if row.left > 0:
                staying.append(i)
        if len(staying) < len(rows):
            self._keep(staying)
        if staying:
            tokens = torch.tensor([picked[i] for i in staying], device=self.model.device)
            self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
            self._positions = self._positions + 1
            out = self.model.llm(
                input_ids=tokens[:, None],
                attention_mask=self._mask,
                position_ids=self._positions,
                cache=self._cache,
                use_cache=True,
            )
            self._cache, self._logits = out.cache, _next_logits(out.logits, self._banned)
        return results

    def leave(self, keys: list[Hashable]) -> None:
        """The rows of `keys` leave the batch before its next step (their callers are gone)."""
        leaving = set(keys)
        staying = [i for i, row in enumerate(self._rows) if row.key not in leaving]
        if len(staying) < len(self._rows):
            self._keep(staying)

    def _keep(self, rows: list[int]) -> None:
        """Only `rows` stay; cache columns every remaining row masks out are cut."""
        self._rows = [self._rows[i] for i in rows]
        if not rows:
            self._cache = None
            return
        index = torch.tensor(rows, device=self._mask.device)
        used = self._mask[index].any(0)
        start = int(used.int().argmax())  # the first column a remaining row attends to
        self._mask, self._positions, self._logits = (
            self._mask[index, start:],
            self._positions[index],
            self._logits[index],
        )
        self._cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self._cache.layers
            ]
        )


@dataclass
class _Row:
    """A row of a `RunningBatch`."""

    key: Hashable
    settings: GenerationSettings
    generator: torch.Generator | None
    stops: set[int]
    left: int  # tokens it may still produce


def _next_logits(logits: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """(B, L, V) -> the last position's (B, V) in float32, `banned` tokens at -inf."""
    last = logits[:, -1].float()
    last[:, banned] = float("-inf")
    return last


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros before its entries along `dim` up to `length`."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _prefix(
    model: P2MedModel, ids: torch.Tensor, mask: torch.Tensor, images: Images | torch.Tensor | None
) -> Interleaved:
    """The LLM's left-aligned input for prompts and their images or encodings."""
    if isinstance(images, torch.Tensor):
        return model.embed_encoded(ids, mask, images, align="left")
    return model.embed(ids, mask, None, images, align="left")


def _generate_uncached(
    model: P2MedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: Images | torch.Tensor | None,
    settings: GenerationSettings,
) -> Iterator[torch.Tensor]:
    """`generate_tokens` recomputing the whole sequence at each step (the baseline of
    bench/generate.py)."""
    llm = model.llm
    prefix = _prefix(model, input_ids.to(model.device), attention_mask.to(model.device), images)
    room = model.context_length - prefix.inputs_embeds.shape[1]
    if room < 1:
        raise ValueError(f"the prompt fills the LLM's context of {model.context_length} positions")
    banned = _banned_ids(model, tokenizer)
    stops = torch.tensor(sorted({tokenizer.eos_token_id, *settings.stop_token_ids}), device=model.device)
    embeds, mask, positions = prefix.inputs_embeds, prefix.attention_mask, prefix.position_ids
    row_settings = [settings] * len(embeds)
    generators = [_generator(settings, model.device) for _ in row_settings]
    done = torch.zeros(len(embeds), dtype=torch.bool, device=model.device)
    for _ in range(min(settings.max_new_tokens, room)):
        out = llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=1,
        )
        logits = _next_logits(out.logits, banned)
        token = _pick_rows(logits, row_settings, generators)
        done |= torch.isin(token, stops)
        if done.all():
            return
        yield token.masked_fill(done, -1)
        step = token[:, None].masked_fill(done[:, None], tokenizer.pad_token_id)
        mask = torch.cat([mask, (~done[:, None]).long()], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        embeds = torch.cat([embeds, llm.get_input_embeddings()(step)], dim=1)


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
    the whole row again at each token grew with the row (docs/performance.md, serve).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)

    def add(self, token: int) -> str:
        """The new text; "" while the token ends inside a multi-byte character."""
        return self._decoder.step(self._backend, token) or ""


def _generator(settings: GenerationSettings, device: torch.device) -> torch.Generator | None:
    """A row's own random numbers: seeded, a request samples the same whatever batch it is in."""
    return torch.Generator(device).manual_seed(settings.seed) if settings.seed is not None else None


def _pick_rows(
    logits: torch.Tensor, settings: list[GenerationSettings], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Next token per row from logits (B, V), each row by its own settings: greedy rows at
    once, sampled rows one by one with their own generators."""
    tokens = logits.argmax(-1)
    for i, row in enumerate(settings):
        if row.temperature > 0:
            tokens[i] = _pick(logits[i : i + 1], row, generators[i])[0]
    return tokens


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
