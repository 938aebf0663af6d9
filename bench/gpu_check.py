"""GPU check: the model's code paths at the paper's shapes on one GPU, then training MFU
and decode speed. Random weights (LLaMA-2-7B and CLIP ViT-L/14-336 shapes, bf16), built
straight on the GPU; no data, no Ray.

    python bench/gpu_check.py                  # on a GPU node: under 8 minutes on one H200
    python bench/gpu_check.py --shape tiny     # the same checks with the tiny preset on CPU

Checks, one PASS/FAIL line each:
- a training step of each stage under ZeRO-2 and under ZeRO-3, through
  `train.step.stage_loss` (the loop's own loss) on a DeepSpeed
  engine of the loop's config, for every mix of images a batch can hold: none, X-rays
  only, CTs only, X-rays and CTs in different samples, both in each sample; and stage
  2's vision steps;
- generation at batch 1 and 32 with merged LoRA, prompts with an X-ray and a CT;
- what the eval's Ray Data actors compute (`eval.answering.Answering`) and what the
  serving deployments compute (`serve_apps.compute`: `ImageEncoding`, `Decoding`).

It ends with two pasteable lines:
    gpu_train: mfu <x> ...         stage 3, ZeRO-2, batch 8 x --text tokens, one image each
    gpu_decode: ms_per_step <batch 1> <batch 32> ...   the serving decode, merged LoRA

MFU counts (6 x trained + 4 x frozen LLM parameters) per LLM position (text and image
slots) and 2 x vision-encoder parameters per vision patch, over the card's dense bf16
peak. Stages train what they would for pretrained LLaMA and CLIP folders (LoRA, not the
base), as the `paper` preset does; gradient checkpointing as the preset sets it.

It needs torch, transformers, peft, deepspeed, pydantic and pyarrow, not Ray, pydicom,
MONAI nor an installed p2med: it runs from the source tree (docs/performance.md says how
to carry the wheels to a GPU node without them).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree's p2med

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from p2med.model.batch import (
    ATTENTION_MASK,
    INPUT_IDS,
    LABELS,
    findings_column,
    shown_column,
)
from p2med.model.checkpoint import merge_lora
from p2med.model.config import ModelConfig
from p2med.model.interleave import IGNORE_INDEX, MODALITIES
from p2med.model.mllm import P2MedModel
from p2med.model.presets import build_model, paper_config, tiny_config
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.data.shards import encode_pixels
from p2med.platform.eval.answering import Answering
from p2med.platform.train.deepspeed_config import deepspeed_config
from p2med.platform.train.native_ops import use_installed_ninja
from p2med.platform.train.settings import DeepSpeedSettings
from p2med.platform.train.step import stage_loss
from p2med.serve_apps.compute import Completion, Decoding, ImageEncoding, Request

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM
# The batches' images: which kinds each sample shows
MIXES: dict[str, Callable[[int], list[list[str]]]] = {
    "text only": lambda n: [[] for _ in range(n)],
    "X-rays only": lambda n: [["xray"] for _ in range(n)],
    "CTs only": lambda n: [["ct"] for _ in range(n)],
    "X-rays and CTs": lambda n: [["xray"] if i % 2 == 0 else ["ct"] for i in range(n)],
    "both in each": lambda n: [["xray", "ct"] for _ in range(n)],
}
STAND_IN = "random weights"  # in place of a pretrained folder: what the stages train


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model shape and the sizes this check runs it at."""

    config: ModelConfig
    vocab_size: int
    new_tokens: int  # per decode request
    decode_batch: int  # the larger decode batch

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.dtype)


def shapes() -> dict[str, Shape]:
    paper = paper_config(llm=None, vision=None)  # the sizes of presets.LLAMA_2_7B and CLIP_VIT_L14_336
    return {
        "paper": Shape(paper, vocab_size=32000, new_tokens=64, decode_batch=32),
        "tiny": Shape(tiny_config(), vocab_size=1024, new_tokens=16, decode_batch=32),
    }


class Report:
    """PASS/FAIL lines; a failure prints its traceback and the checks go on."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, run: Callable[[], str | None]) -> None:
        started = time.perf_counter()
        try:
            detail = run()
        except Exception:
            traceback.print_exc()
            self.failed.append(name)
            print(f"FAIL {name}", flush=True)
            return
        seconds = time.perf_counter() - started
        print(f"PASS {name} ({seconds:.1f} s{'; ' + detail if detail else ''})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--batch", type=int, default=8, help="samples per training step")
    parser.add_argument("--text", type=int, default=512, help="text tokens per training sample")
    parser.add_argument("--seconds", type=float, default=60, help="measured training time, after warm-up")
    args = parser.parse_args()
    shape = shapes()[args.shape]
    device = _start_process_group()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    versions = f"torch {torch.__version__}, deepspeed {deepspeed.__version__}"
    print(f"gpu_check: {args.shape} shape on {name}, {versions}", flush=True)
    tokenizer = _tokenizer(shape.vocab_size)
    report = Report()

    for zero, stage in itertools.product((2, 3), (1, 2, 3)):
        model = _model(shape, tokenizer, device)
        model.same_calls_on_every_rank = zero == 3  # as the training loop sets it
        plan = apply_stage(model, stage)
        engine = _engine(model, zero, args.batch, device)
        for mix in ["text only"] if stage == 1 else list(MIXES):
            batch = _batch(shape.config, tokenizer, MIXES[mix](4), 32, device)
            report.check(f"train stage {stage} ZeRO-{zero} {mix}", partial(_train_step, engine, batch, stage))
        if stage == 2:
            batch = _batch(shape.config, tokenizer, MIXES["X-rays and CTs"](4), 32, device)
            step = partial(_train_step, engine, batch, stage, vision_only=True)
            report.check(f"train stage 2 ZeRO-{zero} vision step", step)
        print(f"  ({plan.describe()})")
        engine.destroy()
        del engine, model, batch
        _free_memory()

    model = merge_lora(_model(shape, tokenizer, device)).eval()
    encoding, decoding = ImageEncoding(model), Decoding(model, tokenizer, window_s=0.0)
    for mix in ("X-rays only", "CTs only", "X-rays and CTs"):
        report.check(f"serve: image encoding, {mix}", partial(_encode, encoding, shape.config, MIXES[mix](3)))
    for mix in MIXES:
        report.check(f"serve: decoding, {mix}", partial(_decode, decoding, encoding, shape, MIXES[mix](3)))
    report.check("serve: a prompt that does not fit is refused", partial(_refused, decoding))
    report.check("eval: answering, every mix", partial(_answer, model, tokenizer, shape.config))
    timings: dict[int, float] = {}
    for rows in (1, shape.decode_batch):
        timed = partial(_time_decode, decoding, encoding, shape, rows, timings)
        report.check(f"generate: batch {rows}, an X-ray and a CT each", timed)
    del model, encoding, decoding
    _free_memory()

    model = _model(shape, tokenizer, device)
    plan = apply_stage(model, 3)
    engine = _engine(model, 2, args.batch, device)
    train_line: list[str] = []
    report.check(
        "train: stage 3 throughput", partial(_time_training, engine, shape, tokenizer, args, train_line)
    )
    engine.destroy()

    print(f"gpu_check: {'all checks passed' if not report.failed else f'FAILED: {report.failed}'}")
    if train_line:
        print(train_line[0] + f", {plan.describe()}")
    if len(timings) == 2:
        b1, big = timings[1], timings[shape.decode_batch]
        print(
            f"gpu_decode: ms_per_step {b1:.1f} {big:.1f} (batch 1, batch {shape.decode_batch}), "
            f"{shape.decode_batch * 1000 / big:,.0f} tokens/s at batch {shape.decode_batch}, "
            f"merged LoRA, {args.shape} shape, {shape.config.dtype}, on {name}"
        )
    dist.destroy_process_group()
    sys.exit(1 if report.failed else 0)


def _start_process_group() -> torch.device:
    """A one-process group (nccl on a GPU, gloo on CPU), as DeepSpeed needs one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for key, value in (env | {"LOCAL_RANK": "0"}).items():
        os.environ.setdefault(key, value)
    cuda = torch.cuda.is_available()
    use_installed_ninja()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


def _tokenizer(vocab_size: int):
    """A BPE of about `vocab_size` tokens, trained on random letter strings."""
    generator = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(generator.choice(letters, size=generator.integers(3, 9))) for _ in range(8 * vocab_size)]
    lines = [" ".join(words[i : i + 16]) for i in range(0, len(words), 16)]
    return train_bpe_tokenizer(lines, vocab_size=vocab_size)


def _model(shape: Shape, tokenizer, device: torch.device) -> P2MedModel:
    """A model of `shape` with random weights, built on `device` in its dtype (a 7B LLM in
    fp32 on the CPU first would take minutes), standing in for pretrained folders."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(shape.dtype)
    try:
        with torch.device(device):
            model = build_model(shape.config, tokenizer)
    finally:
        torch.set_default_dtype(default)
    config = model.config
    if config.preset == "paper":
        model.config = config.replace(
            llm=dataclasses.replace(config.llm, pretrained=STAND_IN),
            vision=dataclasses.replace(config.vision, pretrained=STAND_IN),
        )
        model.enable_gradient_checkpointing()  # the paper preset's default
    return model.train()


def _engine(model: P2MedModel, zero: int, batch: int, device: torch.device):
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(trainable, lr=1e-5),
        config=deepspeed_config(DeepSpeedSettings(zero_stage=zero), batch, 1.0, bf16),
        dist_init_required=False,
    )
    return engine


def _free_memory() -> None:
    """Give back what the last model held (its caller has dropped it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _batch(config: ModelConfig, tokenizer, kinds: list[list[str]], text: int, device: torch.device) -> dict:
    """A training batch of the stage datasets' columns (`model.batch`): random tokens, each
    sample opening with one `<image>` per image it shows, every image labelled."""
    generator = torch.Generator().manual_seed(len(kinds) * 31 + sum(map(len, kinds)))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    size = len(kinds)
    ids = torch.randint(5, len(tokenizer), (size, text), generator=generator)
    ids[ids == image_id] = 5
    for row, shown in enumerate(kinds):
        ids[row, : len(shown)] = image_id
    mask = torch.ones_like(ids)
    labels = ids.masked_fill(ids == image_id, IGNORE_INDEX)
    batch = {INPUT_IDS: ids, ATTENTION_MASK: mask, LABELS: labels}
    labels_k, pixels = config.finding_labels, _image_shapes(config)
    for kind in MODALITIES:
        shown = torch.tensor([kind in k for k in kinds])
        batch[kind] = torch.rand(size, *pixels[kind], generator=generator)
        batch[shown_column(kind)] = shown.long()
        findings = (torch.rand(size, labels_k, generator=generator) > 0.8).float()
        batch[findings_column(kind)] = findings.masked_fill(~shown[:, None], float("nan"))
    return {key: value.to(device) for key, value in batch.items()}


def _train_step(engine, batch: dict, stage: int, vision_only: bool = False) -> str:
    loss = stage_loss(engine, batch, stage, alignment_weight=1.0, vision_only=vision_only)
    engine.backward(loss)
    engine.step()
    value = loss.item()
    if not np.isfinite(value):
        raise AssertionError(f"the loss is {value}")
    return f"loss {value:.3f}"


def _image_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The pixel shape of one image of each kind: X-ray (S, S), CT (D, H, W)."""
    v = config.vision
    return {"xray": (v.xray_size, v.xray_size), "ct": (v.ct_slices, v.ct_size, v.ct_size)}


def _pixels(config: ModelConfig, kinds: list[list[str]]) -> list[np.ndarray]:
    """One decoded image per sample's first kind, float32 in [0, 1], as uploads decode to."""
    shape, generator = _image_shapes(config), np.random.default_rng(1)
    return [generator.random(shape[kind]).astype(np.float32) for shown in kinds for kind in shown]


def _encode(encoding: ImageEncoding, config: ModelConfig, kinds: list[list[str]]) -> str:
    encoded = encoding.encode(_pixels(config, kinds))
    expected = (encoding.model.image_slots, encoding.model.config.llm.hidden_size)
    bad = [e.shape for e in encoded if e.shape != expected or not np.isfinite(e).all()]
    if len(encoded) != sum(map(len, kinds)) or bad:
        raise AssertionError(f"{len(encoded)} encodings, wrong or non-finite: {bad}")
    return f"{len(encoded)} x {expected}"


def _requests(encoding: ImageEncoding, shape: Shape, kinds: list[list[str]], tokens: int) -> list[Request]:
    encoded = encoding.encode(_pixels(shape.config, kinds)) if any(kinds) else []
    requests, taken = [], 0
    for shown in kinds:
        prompt = f"{IMAGE_TOKEN * len(shown)}Write the report."
        images = encoded[taken : taken + len(shown)]
        taken += len(shown)
        requests.append(Request(Completion(prompt, max_tokens=tokens), images, streaming=True))
    return requests


def _decode(decoding: Decoding, encoding: ImageEncoding, shape: Shape, kinds: list[list[str]]) -> str:
    return f"{len(_run(decoding, _requests(encoding, shape, kinds, 8)))} requests"


def _run(decoding: Decoding, requests: list[Request], times: list[float] | None = None) -> dict[int, str]:
    """Every request through the running batch at once; their texts."""
    waiting = [list(enumerate(requests))]

    class AllAtOnce:  # the `Feed`: every request at the first admit; none leaves
        def admit(self, held: int) -> list:
            if times is not None:
                times.append(time.perf_counter())
            return waiting.pop() if waiting else []

        def gone(self) -> list:
            return []

    texts: dict[int, str] = {}
    finished = set()
    for check in requests:
        decoding.check(check.completion.prompt, len(check.encoded))
    for updates in decoding.steps(AllAtOnce()):
        for key, (text, done) in updates.items():
            texts[key] = texts.get(key, "") + text
            if done:
                finished.add(key)
    if finished != set(range(len(requests))):
        raise AssertionError(f"{len(finished)} of {len(requests)} requests finished")
    return texts


def _refused(decoding: Decoding) -> None:
    try:
        decoding.check(IMAGE_TOKEN + "Write the report.", images=0)
    except Exception as refusal:
        if "image slots" in str(refusal):
            return None
        raise
    raise AssertionError("a prompt with an image slot and no image was accepted")


def _answer(model: P2MedModel, tokenizer, config: ModelConfig) -> str:
    shapes = _image_shapes(config)
    kinds = [k for mix in MIXES.values() for k in mix(2)]
    pixels = iter(_pixels(config, kinds))
    samples = []
    for shown in kinds:
        sample = {"prompt": f"{IMAGE_TOKEN * len(shown)}Write the report.", "xray": None, "ct": None}
        for kind in shown:
            sample[kind] = encode_pixels(next(pixels))
        samples.append(sample)
    answers = Answering(model, tokenizer, shapes, max_new_tokens=8).answer(samples)
    failed = [reason for _, reason in answers if reason]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(samples)} samples failed: {failed[0]}")
    return f"{len(samples)} samples"


def _time_decode(decoding: Decoding, encoding: ImageEncoding, shape: Shape, rows: int, timings: dict) -> str:
    """The median time of a decode step with `rows` requests in the batch (after a warm-up
    run); each admit call comes before one step (`window_s` 0)."""
    both = [["xray", "ct"]] * rows
    _run(decoding, _requests(encoding, shape, both, 4))  # warm-up
    times: list[float] = []
    _run(decoding, _requests(encoding, shape, both, shape.new_tokens), times)
    steps = np.diff(times)[1:]  # the first interval holds the prompts' prefill
    timings[rows] = statistics.median(steps) * 1000
    return f"{timings[rows]:.1f} ms per step over {len(steps)} steps"


def _time_training(engine, shape: Shape, tokenizer, args, line: list[str]) -> str:
    config, model = shape.config, engine.module
    device = next(model.parameters()).device
    batch = _batch(config, tokenizer, MIXES["X-rays and CTs"](args.batch), args.text, device)
    for _ in range(3):  # warm-up
        _train_step(engine, batch, 3)
    _synchronize()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds or steps < 2:
        _train_step(engine, batch, 3)
        steps += 1
    _synchronize()
    seconds = time.perf_counter() - started

    images = args.batch  # one each
    positions = int(batch[ATTENTION_MASK].sum()) + images * (model.image_slots - 1)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_llm = sum(p.numel() for p in model.llm.parameters() if not p.requires_grad)
    vision = sum(p.numel() for p in model.vision.parameters())
    v = config.vision
    xrays, cts = (args.batch + 1) // 2, args.batch // 2
    patches = (
        xrays * (v.xray_size // v.patch_size) ** 2 + cts * v.ct_slices * (v.ct_size // v.patch_size) ** 2
    )
    flops = steps * ((6 * trained + 4 * frozen_llm) * positions + 2 * vision * patches)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    mfu = f"{flops / seconds / peak:.2f}" if peak else "n/a"
    line.append(
        f"gpu_train: mfu {mfu} ({flops / seconds / 1e12:.1f} TFLOP/s over the card's dense bf16 peak), "
        f"{steps * args.batch / seconds:.1f} samples/s, {steps * positions / seconds:,.0f} LLM positions/s, "
        f"stage 3 ZeRO-2 {config.dtype}, batch {args.batch} x {args.text} text tokens + one image each, "
        f"gradient checkpointing {'on' if config.preset == 'paper' else 'off'}, "
        f"peak memory {_peak_memory_gib(device)}, on {name}"
    )
    return f"{steps} steps in {seconds:.1f} s"


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.0f} GiB"


if __name__ == "__main__":
    main()
