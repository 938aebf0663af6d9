"""Presets: `tiny` from configs; `paper` from Hugging Face folders (written here, local and
on the local S3 server), in bf16."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from p2med.model.interleave import Images
from p2med.model.presets import CLIP_VIT_L14_336, LLAMA_2_7B, paper, tiny
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN, with_image_token
from p2med.platform.storage import resolve
from tests.model.conftest import right_padded


def test_tiny_is_small_and_random(tokenizer):
    torch.manual_seed(0)
    first = tiny(tokenizer)
    torch.manual_seed(1)
    second = tiny(tokenizer)
    total = sum(p.numel() for p in first.parameters())
    assert 2e6 < total < 10e6
    assert first.vision.stem is not None and first.config.vision.pretrained is None
    assert not torch.equal(first.resampler.latents, second.resampler.latents)


def write_bases(root, tokenizer) -> tuple[LlamaForCausalLM, CLIPVisionModel]:
    """Small stand-ins for LLaMA-2-7B and CLIP ViT-L/14-336, in Hugging Face format: their
    input sizes, few and narrow layers."""
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_VIT_L14_336.xray_size,
            patch_size=CLIP_VIT_L14_336.patch_size,
            num_channels=CLIP_VIT_L14_336.channels,
        )
    )
    clip.save_pretrained(root / "clip")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=LLAMA_2_7B.max_positions,
        )
    )
    llama.save_pretrained(root / "llama")
    return llama, clip


@pytest.fixture(params=["local", "s3"])
def bases(request, tmp_path, tokenizer, monkeypatch):
    """(llm URI, vision URI, fsspec filesystem or None, the LLaMA, the CLIP)."""
    monkeypatch.setenv("P2MED_MODEL_CACHE", str(tmp_path / "cache"))
    llama, clip = write_bases(tmp_path, tokenizer)
    if request.param == "local":
        return str(tmp_path / "llama"), str(tmp_path / "clip"), None, llama, clip
    bucket, storage = request.getfixturevalue("bucket"), request.getfixturevalue("s3_storage")
    fs = resolve(f"s3://{bucket}", storage).fs
    for name in ("llama", "clip"):
        fs.put(str(tmp_path / name) + "/", f"{bucket}/bases/{name}/", recursive=True)
    return f"s3://{bucket}/bases/llama", f"s3://{bucket}/bases/clip", fs, llama, clip


@pytest.mark.s3
def test_paper_loads_its_bases_in_bf16(tokenizer, bases):
    llm, vision, fs, llama, clip = bases
    model = paper(tokenizer, llm=llm, vision=vision, fs=fs)
    assert model.dtype == torch.bfloat16 and model.llm.get_base_model().dtype == torch.bfloat16
    loaded_embed = model.llm.get_base_model().model.embed_tokens.weight
    assert torch.equal(loaded_embed, llama.model.embed_tokens.weight.to(torch.bfloat16))
    loaded_patches = model.vision.clip.embeddings.patch_embedding.weight
    assert torch.equal(loaded_patches, clip.embeddings.patch_embedding.weight.to(torch.bfloat16))
    plan = apply_stage(model, 1)
    assert plan.parts == ("lora",) and plan.trainable < plan.total / 10
    ids, mask = right_padded(tokenizer, [f"{IMAGE_TOKEN} Findings:", f"{IMAGE_TOKEN} CT:"])
    v = model.config.vision
    xray, ct = torch.rand(1, v.xray_size, v.xray_size), torch.rand(1, v.ct_slices, v.ct_size, v.ct_size)
    images = Images([["xray"], ["ct"]], xray=xray, ct=ct)
    out = model(ids, mask, ids, images)
    assert torch.isfinite(out.loss)


def test_a_pretrained_tokenizer_gets_an_image_token_without_new_embeddings():
    core = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "fever": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert IMAGE_TOKEN not in tok.get_vocab() and tok.pad_token is None
    tok = with_image_token(tok)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == 4  # past the LLM's 4 rows: never embedded
    assert tok.pad_token == "<unk>"
    assert tok(f"fever {IMAGE_TOKEN}", add_special_tokens=False).input_ids == [3, 4]
