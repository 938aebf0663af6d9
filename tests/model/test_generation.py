"""Generation: the KV cache changes nothing, batching changes nothing (rows joining a
running batch included), stops and limits hold, streaming adds up, and text-only decoding
matches transformers' own `generate`."""

from __future__ import annotations

import pytest
import torch

from p2med.model.generation import (
    GenerationSettings,
    RunningBatch,
    TextStream,
    encode_prompts,
    generate,
    generate_tokens,
    stream,
)
from p2med.model.interleave import Images
from p2med.model.tokenizer import IMAGE_TOKEN
from tests.model.conftest import cts, xrays

PROMPTS = [f"{IMAGE_TOKEN}\nWrite the report.", f"{IMAGE_TOKEN}\nChest CT shows", "Impression:"]


def images() -> Images:
    return Images([["xray"], ["ct"], []], xray=xrays(1), ct=cts(1))


def tokens(model, tokenizer, prompts, imgs, settings) -> list[list[int]]:
    ids, mask = encode_prompts(tokenizer, prompts)
    rows = [[] for _ in prompts]
    for step in generate_tokens(model, tokenizer, ids, mask, imgs, settings):
        for row, token in zip(rows, step.tolist(), strict=True):
            if token >= 0:
                row.append(token)
    return rows


def test_the_cache_changes_nothing(model, tokenizer):
    settings = GenerationSettings(max_new_tokens=12)
    cached = tokens(model, tokenizer, PROMPTS, images(), settings)
    uncached = tokens(
        model, tokenizer, PROMPTS, images(), GenerationSettings(max_new_tokens=12, use_cache=False)
    )
    assert cached == uncached and all(len(r) == 12 for r in cached)


def test_batching_changes_nothing(model, tokenizer):
    settings = GenerationSettings(max_new_tokens=8)
    batched = tokens(model, tokenizer, PROMPTS, images(), settings)
    alone = [
        tokens(model, tokenizer, [PROMPTS[0]], Images([["xray"]], xray=xrays(1)), settings)[0],
        tokens(model, tokenizer, [PROMPTS[1]], Images([["ct"]], ct=cts(1)), settings)[0],
        tokens(model, tokenizer, [PROMPTS[2]], None, settings)[0],
    ]
    assert batched == alone


def test_text_only_greedy_matches_transformers_generate(model, tokenizer):
    ids, mask = encode_prompts(tokenizer, ["Impression:", "Findings: consolidation in the"])
    ours = tokens(
        model, tokenizer, ["Impression:", "Findings: consolidation in the"], None, GenerationSettings(10)
    )
    theirs = model.llm.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
        bad_words_ids=[
            [tokenizer.pad_token_id],
            [tokenizer.bos_token_id],
            [tokenizer.unk_token_id],
            [model.image_token_id],
        ],
    )
    assert [row[ids.shape[1] :].tolist() for row in theirs] == ours


def test_stop_tokens_and_the_token_limit(model, tokenizer):
    free = tokens(model, tokenizer, PROMPTS, images(), GenerationSettings(max_new_tokens=6))
    stop = free[0][2]  # row 0 stops before its third token (and every row at its first of this id)
    stopped = tokens(
        model, tokenizer, PROMPTS, images(), GenerationSettings(max_new_tokens=6, stop_token_ids=(stop,))
    )
    for row, full in zip(stopped, free, strict=True):
        assert row == (full[: full.index(stop)] if stop in full else full)
    assert all(
        len(r) <= 3 for r in tokens(model, tokenizer, PROMPTS, images(), GenerationSettings(max_new_tokens=3))
    )


def test_stream_adds_up_to_generate(model, tokenizer):
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    settings = GenerationSettings(max_new_tokens=10)
    texts = generate(model, tokenizer, ids, mask, images(), settings)
    streamed = [""] * len(PROMPTS)
    stopped = [False] * len(PROMPTS)
    for deltas in stream(model, tokenizer, ids, mask, images(), settings):
        assert not any(done and d is not None for done, d in zip(stopped, deltas, strict=True))
        stopped = [d is None for d in deltas]  # a stopped row stays stopped
        streamed = [s + (d or "") for s, d in zip(streamed, deltas, strict=True)]
    assert streamed == texts


def test_streamed_text_holds_back_a_split_character(tokenizer):
    text = "Opacité 肺炎 in the right lower lobe"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    row = TextStream(tokenizer)
    pieces = [row.add(token) for token in ids]
    assert "".join(pieces) == text
    assert "" in pieces  # 肺 and 炎 are three bytes each: tokens that end inside them add nothing
    assert not any("\ufffd" in piece for piece in pieces)


def test_sampling_is_seeded(model, tokenizer):
    def sample(seed):
        settings = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=seed)
        return tokens(model, tokenizer, PROMPTS, images(), settings)

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_never_generates_padding_or_image_tokens(model, tokenizer):
    with torch.no_grad():  # make padding the model's favourite token
        model.llm.get_output_embeddings().weight[tokenizer.pad_token_id] = (
            10 * model.llm.get_output_embeddings().weight.abs().max()
        )
    out = tokens(model, tokenizer, PROMPTS, images(), GenerationSettings(max_new_tokens=5))
    assert not {tokenizer.pad_token_id, model.image_token_id} & {t for row in out for t in row}


def test_bad_generation_input_is_named(model, tokenizer):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        encode_prompts(tokenizer, ["Impression:", "  "])
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        GenerationSettings(max_new_tokens=0)
    long = " ".join(["consolidation"] * 1100)
    ids, mask = encode_prompts(tokenizer, [long])
    with pytest.raises(ValueError, match="context"):
        generate(model, tokenizer, ids, mask)


def test_generating_from_encoded_images_is_generating_from_the_images(model, tokenizer):
    """What the serving app does: images encoded by one deployment, text generated by another."""
    settings = GenerationSettings(max_new_tokens=8)
    with torch.no_grad():
        encoded = model.encode_images(images())  # (P, N + K, D)
    assert encoded.shape == (2, model.image_slots, model.llm.config.hidden_size)
    assert tokens(model, tokenizer, PROMPTS, encoded, settings) == tokens(
        model, tokenizer, PROMPTS, images(), settings
    )
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="encoded images must be"):
        list(generate_tokens(model, tokenizer, ids, mask, encoded[:1], settings))


def decode_running(model, tokenizer, joins: dict[int, list[tuple[str, str, GenerationSettings]]]):
    """Rows (key, prompt, settings) joining one RunningBatch before the step numbered in
    `joins`; every row's tokens, and the largest batch seen."""
    batch = RunningBatch(model, tokenizer)
    out: dict[str, list[int]] = {}
    largest, step = 0, 0
    while batch or any(at >= step for at in joins):
        if step in joins:
            keys, prompts, settings = zip(*joins[step], strict=True)
            ids, mask = encode_prompts(tokenizer, list(prompts))
            batch.join(list(keys), ids, mask, None, list(settings))
        largest = max(largest, len(batch))
        for key, (token, _) in batch.step().items() if batch else ():
            if token is not None:
                out.setdefault(key, []).append(token)
        step += 1
    return out, largest


def test_rows_joining_a_running_batch_decode_as_they_would_alone(model, tokenizer):
    """Rows join at different steps with prompts of different lengths (the cache is
    left-padded to the longer), leave at their own limits (its columns are cut), and each
    gets the tokens it gets alone."""
    prompts = {"a": "Impression:", "b": "Findings: consolidation in the right lower lobe", "c": "The"}
    limits = {"a": 9, "b": 4, "c": 7}
    joins = {
        0: [("a", prompts["a"], GenerationSettings(max_new_tokens=limits["a"]))],
        2: [("b", prompts["b"], GenerationSettings(max_new_tokens=limits["b"]))],
        7: [("c", prompts["c"], GenerationSettings(max_new_tokens=limits["c"]))],
    }
    together, largest = decode_running(model, tokenizer, joins)
    alone = {
        key: tokens(model, tokenizer, [prompt], None, GenerationSettings(max_new_tokens=limits[key]))[0]
        for key, prompt in prompts.items()
    }
    assert together == alone
    assert largest == 2  # b joined a, and left before c came
    assert [len(together[key]) for key in "abc"] == [9, 4, 7]


def test_a_seeded_row_samples_the_same_in_any_batch(model, tokenizer):
    seeded = GenerationSettings(max_new_tokens=10, temperature=1.5, seed=7)
    alone, _ = decode_running(model, tokenizer, {0: [("s", "Impression:", seeded)]})
    greedy = GenerationSettings(max_new_tokens=10)
    mixed, _ = decode_running(
        model, tokenizer, {0: [("g", "Findings:", greedy)], 3: [("s", "Impression:", seeded)]}
    )
    other_seed = GenerationSettings(max_new_tokens=10, temperature=1.5, seed=8)
    different, _ = decode_running(model, tokenizer, {0: [("s", "Impression:", other_seed)]})
    assert mixed["s"] == alone["s"] != different["s"]
    assert mixed["g"] == tokens(model, tokenizer, ["Findings:"], None, greedy)[0]
