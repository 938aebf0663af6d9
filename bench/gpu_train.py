"""GPU training throughput: tokens/s and model FLOPs utilisation (MFU) of a paper-shaped
P2Med-MLLM with random weights, stage 3, under DeepSpeed ZeRO-2 in bf16, on one GPU.

    .venv/bin/python bench/gpu_train.py                  # about 2 minutes of steps on a GPU
    .venv/bin/python bench/gpu_train.py --shape tiny --text 256 --seconds 20   # check it on CPU

The model: a 1B-class LLaMA (2048 wide, 22 layers, GQA 32/4 heads; TinyLlama's shape)
and a CLIP ViT-L/14 encoder at 336 px, the paper preset's 64-latent resampler. Batches
are synthetic and fixed (random tokens, one X-ray or one CT per sample), so the loop
measures the model and DeepSpeed, not the data pipeline; the same DeepSpeed config and
step as `p2med.platform.train.loop`. Random-init LLM: stage 3 trains its base weights,
LoRA and the resampler (the vision encoder is frozen).

MFU counts 6 FLOPs per parameter and token for the trained LLM and 2 for the frozen
vision encoder (forward only; its backward is not needed), over the peak dense bf16
FLOP/s of the card (H100/H200 SXM: 989 TFLOP/s). The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import deepspeed
import torch
import torch.distributed as dist

from p2med.model.config import LLMConfig, ModelConfig, ResamplerConfig, VisionConfig
from p2med.model.interleave import IGNORE_INDEX, Images
from p2med.model.presets import CLIP_VIT_L14_336, PAPER_RESAMPLER, build_model
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.train.deepspeed_config import deepspeed_config
from p2med.platform.train.settings import DeepSpeedSettings

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM
SHAPES = {
    "paper": ModelConfig(
        preset="paper",
        vision=dataclasses.replace(CLIP_VIT_L14_336, ct_slices=8),
        resampler=PAPER_RESAMPLER,
        llm=LLMConfig(
            hidden_size=2048, layers=22, heads=32, kv_heads=4, intermediate_size=5632, max_positions=2048
        ),
        dtype="bfloat16",
    ),
    "tiny": ModelConfig(
        preset="tiny",
        vision=VisionConfig(
            hidden_size=64, layers=2, heads=4, patch_size=16, xray_size=64, ct_slices=4, ct_size=64
        ),
        resampler=ResamplerConfig(latents=8, depth=1, heads=4),
        llm=LLMConfig(
            hidden_size=128, layers=2, heads=4, kv_heads=4, intermediate_size=256, max_positions=512
        ),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="paper")
    parser.add_argument("--batch", type=int, default=8, help="samples per step")
    parser.add_argument("--text", type=int, default=512, help="text tokens per sample")
    parser.add_argument("--seconds", type=float, default=120, help="measured time, after warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
        "RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")

    tokenizer = train_bpe_tokenizer(
        [f"chest radiograph report number {i}" for i in range(200)], vocab_size=400
    )
    config = SHAPES[args.shape]
    torch.manual_seed(0)
    model = build_model(config, tokenizer)
    plan = apply_stage(model, 3)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5),
        config=deepspeed_config(DeepSpeedSettings(zero_stage=2), args.batch, 1.0, bf16),
        dist_init_required=False,
    )
    ids, mask, labels, images = _batch(config, tokenizer, args.batch, args.text, device)
    llm_tokens = int(mask.sum()) + images_in(images) * config.resampler.latents

    steps, started = 0, None
    while started is None or time.perf_counter() - started < args.seconds:
        if steps == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            started, measured = time.perf_counter(), 0
        loss = engine(ids, mask, labels, images).loss
        engine.backward(loss)
        engine.step()
        steps += 1
        if started is not None:
            measured += 1
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started

    llm_params = sum(p.numel() for p in model.llm.parameters()) + sum(
        p.numel() for p in model.resampler.parameters()
    )
    vision_params = sum(p.numel() for p in model.vision.parameters())
    patches = _vision_tokens(config, images)
    flops_per_step = 6 * llm_params * llm_tokens + 2 * vision_params * patches
    tokens_per_s = measured * llm_tokens / seconds
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    achieved = measured * flops_per_step / seconds
    print(f"device: {name}; {plan.describe()}")
    print(
        f"{measured} steps of {args.batch} samples ({llm_tokens} LLM tokens) in {seconds:.1f} s, "
        f"last loss {loss.item():.3f}"
    )
    mfu = f"{achieved / peak:.2f}" if peak else "n/a"
    print(
        f"gpu_train: ratio {mfu} (model FLOPs utilisation vs the card's dense bf16 peak), "
        f"{tokens_per_s:,.0f} tokens/s, {achieved / 1e12:.1f} TFLOP/s, {args.shape} shape "
        f"({llm_params / 1e9:.2f} B LLM + resampler, {vision_params / 1e6:.0f} M vision), ZeRO-2 "
        f"{'bf16' if bf16 else 'fp32'}, batch {args.batch}, on {name}"
    )
    dist.destroy_process_group()


def _batch(config: ModelConfig, tokenizer, batch: int, text: int, device: torch.device):
    """Fixed synthetic samples: half one X-ray, half one CT, `text` random tokens each."""
    generator = torch.Generator().manual_seed(0)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = torch.randint(5, len(tokenizer), (batch, text), generator=generator)
    ids[ids == image_id] = 5
    ids[:, 0] = image_id  # each sample opens with its image
    mask = torch.ones_like(ids)
    labels = ids.masked_fill(ids == image_id, IGNORE_INDEX)
    v = config.vision
    xrays, cts = (batch + 1) // 2, batch // 2
    kinds = [["xray"] if i < xrays else ["ct"] for i in range(batch)]
    images = Images(
        kinds,
        xray=torch.rand(xrays, v.xray_size, v.xray_size, generator=generator).to(device),
        ct=torch.rand(cts, v.ct_slices, v.ct_size, v.ct_size, generator=generator).to(device)
        if cts
        else None,
    )
    return ids.to(device), mask.to(device), labels.to(device), images


def images_in(images: Images) -> int:
    return sum(len(k) for k in images.kinds)


def _vision_tokens(config: ModelConfig, images: Images) -> int:
    """Patches the vision encoder sees in one step (X-rays, plus every CT slice)."""
    v = config.vision
    per_xray = (v.xray_size // v.patch_size) ** 2
    per_slice = (v.ct_size // v.patch_size) ** 2
    xrays = 0 if images.xray is None else len(images.xray)
    slices = 0 if images.ct is None else len(images.ct) * v.ct_slices
    return xrays * per_xray + slices * per_slice


if __name__ == "__main__":
    main()
