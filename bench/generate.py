"""Generation speed of the tiny model: with the KV cache vs without, and our decoding loop vs
`transformers`' own `generate` on the LLM alone; plus one training step's time.

    .venv/bin/python bench/generate.py                  # a few minutes
    .venv/bin/python bench/generate.py --new-tokens 64  # quicker look

Setup: a tokenizer trained on synthetic reports, the `tiny` preset (random init, eval mode,
one thread per core as torch sets it). Measured in the same run, alternating, best of
`--repeats` for each side (this VM's speed drifts between minutes):

- cache: a batch of 4 prompts with images (2 X-rays, 2 CTs), greedy, `--new-tokens` tokens,
  `generate` with the KV cache vs the same call recomputing the whole sequence per token
  (both yield the same tokens: tests/model/test_generation.py).
- overhead: a text-only batch of 4, greedy, our `generate` vs `model.llm.generate` with the
  same banned tokens and stop token (identical tokens); overhead = ours / theirs - 1.
- step: forward + backward of 8 samples (4 with an X-ray, 4 with a CT, 128 text tokens each).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from p2med.model.generation import GenerationSettings, encode_prompts, generate, generate_tokens
from p2med.model.interleave import IGNORE_INDEX, Images
from p2med.model.presets import tiny
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.data.synth.cases import make_case
from p2med.platform.data.synth.reports import report_record
from p2med.platform.data.synth.settings import SynthSettings


def report_texts(count: int) -> list[str]:
    config = SynthSettings()
    texts = []
    for index in range(count):
        case = make_case(config.seed, index, config.prevalence.model_dump(), config.ct_fraction)
        report = report_record(case, config.seed, "DX", "1.2.3")
        texts.append(f"Findings: {report['findings']}\nImpression: {report['impression']}")
    return texts


def best_of(repeats: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best wall time of each run, alternating between them."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(report_texts(400), vocab_size=4096)
    model = tiny(tokenizer).eval()
    config = model.config.vision
    parameters = sum(p.numel() for p in model.parameters())
    print(f"setup: tiny model, {parameters:,} parameters, vocabulary {len(tokenizer)} (all the reports need)")

    prompts = [f"{IMAGE_TOKEN}\nWrite the radiology report for this chest X-ray."] * 2
    prompts += [f"{IMAGE_TOKEN}\nWrite the radiology report for this chest CT."] * 2
    images = Images(
        [["xray"], ["xray"], ["ct"], ["ct"]],
        xray=torch.rand(2, config.xray_size, config.xray_size),
        ct=torch.rand(2, config.ct_slices, config.ct_size, config.ct_size),
    )
    ids, mask = encode_prompts(tokenizer, prompts)
    cached = GenerationSettings(max_new_tokens=args.new_tokens)
    uncached = GenerationSettings(max_new_tokens=args.new_tokens, use_cache=False)
    steps = list(generate_tokens(model, tokenizer, ids, mask, images, cached))
    produced = sum(int((step >= 0).sum()) for step in steps)
    cache_times = best_of(
        args.repeats,
        {
            "cache": lambda: generate(model, tokenizer, ids, mask, images, cached),
            "no cache": lambda: generate(model, tokenizer, ids, mask, images, uncached),
        },
    )
    for name, seconds in cache_times.items():
        print(f"{name}: {args.new_tokens} steps x 4 rows in {seconds:.2f} s")

    text_ids, text_mask = encode_prompts(
        tokenizer, ["Findings:", "Impression:", "Findings: The lungs", "Impression: No"]
    )
    banned = [
        [i]
        for i in (
            tokenizer.pad_token_id,
            tokenizer.bos_token_id,
            tokenizer.unk_token_id,
            model.image_token_id,
        )
    ]

    def theirs() -> None:
        with torch.inference_mode():
            model.llm.generate(
                input_ids=text_ids,
                attention_mask=text_mask,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                bad_words_ids=banned,
            )

    text_times = best_of(
        args.repeats,
        {
            "ours": lambda: generate(model, tokenizer, text_ids, text_mask, None, cached),
            "transformers": theirs,
        },
    )
    overhead = text_times["ours"] / text_times["transformers"] - 1
    ours_s, theirs_s = text_times["ours"], text_times["transformers"]
    print(f"text only: ours {ours_s:.2f} s, transformers generate {theirs_s:.2f} s")

    apply_stage(model, 3)
    model.train()
    texts = [f"{IMAGE_TOKEN}\n" + t for t in report_texts(8)]
    rows = [tokenizer(t).input_ids[:128] for t in texts]
    batch_ids = torch.tensor([r + [tokenizer.pad_token_id] * (128 - len(r)) for r in rows])
    batch_mask = (torch.arange(128)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    labels = batch_ids.masked_fill(batch_mask == 0, IGNORE_INDEX)
    step_images = Images(
        [["xray"]] * 4 + [["ct"]] * 4,
        xray=torch.rand(4, config.xray_size, config.xray_size),
        ct=torch.rand(4, config.ct_slices, config.ct_size, config.ct_size),
    )

    def step() -> None:
        model(batch_ids, batch_mask, labels, step_images).loss.backward()
        model.zero_grad(set_to_none=True)

    step_s = best_of(args.repeats + 2, {"step": step})["step"]
    print(f"train step: forward + backward of 8 samples (4 X-ray, 4 CT, 128 tokens) in {step_s:.2f} s")

    rate = produced / cache_times["cache"]
    print(
        f"generate: ratio {cache_times['no cache'] / cache_times['cache']:.2f} (KV cache vs none), "
        f"{rate:.0f} tokens/s with images; overhead vs transformers generate {100 * overhead:+.1f}% "
        f"(target <= 10%); tiny train step of 8 samples {step_s:.2f} s"
    )


if __name__ == "__main__":
    main()
