"""Named model presets over one parameterised builder.

tok = train_bpe_tokenizer(corpus)          # or with_image_token(AutoTokenizer...)
model = tiny(tok)                          # random init, trains on 2 CPU cores
model = paper(tok, llm="s3://models/llama-2-7b", vision="s3://models/clip-vit-l-14-336")
"""

from __future__ import annotations

import dataclasses

import fsspec
import torch
from transformers import CLIPVisionModel, PreTrainedTokenizerBase

from p2med.model.config import LLMConfig, LoraConfig, ModelConfig, ResamplerConfig, VisionConfig
from p2med.model.files import cached_copy
from p2med.model.llm import add_lora, load_llama, new_llama
from p2med.model.mllm import P2MedModel
from p2med.model.resampler import PerceiverResampler
from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.model.vision import VisionEncoder, clip_config

CLIP_MEAN, CLIP_STD = 0.466, 0.269  # OpenAI CLIP's per-channel statistics, averaged: inputs are grayscale

# The paper's parts by shape. A pretrained folder brings its own weights and sizes, so the
# paper preset only records these; stand-ins built from random weights (the GPU bench, a
# test's small bases) copy them.
CLIP_VIT_L14_336 = VisionConfig(
    hidden_size=1024,
    layers=24,
    heads=16,
    patch_size=14,
    channels=3,  # grayscale is repeated
    image_mean=CLIP_MEAN,
    image_std=CLIP_STD,
    xray_size=336,
    ct_slices=32,
    ct_size=224,
)
LLAMA_2_7B = LLMConfig(
    hidden_size=4096, layers=32, heads=32, kv_heads=32, intermediate_size=11008, max_positions=4096
)
PAPER_RESAMPLER = ResamplerConfig(latents=64, depth=6, heads=16, ff_mult=4)


def tiny_config() -> ModelConfig:
    """~6 M parameters: conv stem + 2-layer CLIP, 32 latents, a 4-layer 256-wide LLaMA."""
    return ModelConfig(
        preset="tiny",
        # Four stride-2 convs: an 8 x 8 grid of tokens for a 128 px X-ray. Against three (16 x 16)
        # the finding head reads bench X-rays better after as many steps, in less time: each
        # token sees a lobe-sized patch, and CLIP runs on a quarter of the tokens
        # (docs/performance.md, Model quality).
        vision=VisionConfig(
            hidden_size=128, layers=2, heads=4, patch_size=1, stem_channels=(32, 64, 128, 128)
        ),
        resampler=ResamplerConfig(latents=32, depth=2, heads=4),
        llm=LLMConfig(
            hidden_size=256,
            layers=4,
            heads=4,
            kv_heads=4,
            intermediate_size=688,
            max_positions=1024,
            # No LoRA dropout: its masks cost a noticeable share of a CPU training step, and the
            # base trains alongside LoRA here (stages 1 and 3), so it regularises nothing
            # (docs/performance.md).
            lora=LoraConfig(dropout=0.0),
        ),
    )


def paper_config(llm: str, vision: str) -> ModelConfig:
    """LLaMA-2-7B-class LLM and CLIP ViT-L/14-336 from Hugging Face folders, bf16."""
    return ModelConfig(
        preset="paper",
        vision=dataclasses.replace(CLIP_VIT_L14_336, pretrained=vision),
        resampler=PAPER_RESAMPLER,
        llm=dataclasses.replace(LLAMA_2_7B, pretrained=llm, lora=LoraConfig(rank=16, alpha=32, dropout=0.05)),
        dtype="bfloat16",
        alignment="head",  # the paper's architecture: the LLM reads the latents alone
    )


PRESETS = {"tiny": tiny_config, "paper": paper_config}


def build_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    fs: fsspec.AbstractFileSystem | None = None,
    llm_folder: str | None = None,
    device: torch.device | None = None,
) -> P2MedModel:
    """The model `config` describes, with pretrained parts read from their folders (local
    or remote) and everything else randomly initialised, on `device` (default: the CPU).
    `llm_folder` (a checkpoint's own LLaMA) overrides where the LLM comes from. Pretrained
    weights are read straight onto the device: a rank never holds a 7B base in CPU memory.

    Raises:
        ValueError: the tokenizer has no `<image>` token.
    """
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {IMAGE_TOKEN} token; prepare it with tokenizer.with_image_token"
        )
    dtype = getattr(torch, config.dtype)
    if config.vision.pretrained:
        folder = cached_copy(config.vision.pretrained, fs)
        clip = CLIPVisionModel.from_pretrained(folder, dtype=dtype, local_files_only=True, device_map=device)
    else:
        clip = CLIPVisionModel(clip_config(config.vision))
    if llm_folder or config.llm.pretrained:
        llm = load_llama(llm_folder or cached_copy(config.llm.pretrained, fs), dtype, device)
    else:
        vocab = max(len(tokenizer), image_token_id + 1)
        config = config.replace(vocab_size=vocab)
        ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        llm = new_llama(config.llm, vocab, *ids)
    if not config.merged:
        llm = add_lora(llm, config.llm.lora)
    vision = VisionEncoder(config.vision, clip)
    resampler = PerceiverResampler(config.resampler, vision.width, llm.config.hidden_size)
    return P2MedModel(config, vision, resampler, llm, image_token_id).to(device=device, dtype=dtype)


def tiny(tokenizer: PreTrainedTokenizerBase) -> P2MedModel:
    """The `tiny` preset: random init, for CPUs, tests and the quickstart."""
    return build_model(tiny_config(), tokenizer)


def paper(
    tokenizer: PreTrainedTokenizerBase, llm: str, vision: str, fs: fsspec.AbstractFileSystem | None = None
) -> P2MedModel:
    """The paper-scale preset from a LLaMA folder and a CLIP folder (local or remote)."""
    return build_model(paper_config(llm, vision), tokenizer, fs)
