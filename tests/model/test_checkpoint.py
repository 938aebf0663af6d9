"""Save and load on local disk and on the local S3 server: bit-identical outputs, merge,
incomplete folders."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from p2med.model.checkpoint import load_model, merge_lora, save_model
from p2med.model.interleave import IGNORE_INDEX
from p2med.model.stages import apply_stage
from p2med.platform.storage import resolve
from tests.model.conftest import MIXED_TEXTS, mixed_images, right_padded


def trained_a_little(model, tokenizer, stage: int = 3):
    """Move every trainable weight off its initial value (LoRA's B starts at zero)."""
    apply_stage(model, stage)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    model.train()
    for _ in range(2):
        model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), mixed_images()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    with torch.no_grad():
        return model(ids, mask, images=mixed_images()).logits


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    """A model folder URI and the fsspec filesystem to reach it."""
    if request.param == "local":
        return str(tmp_path / "model"), None
    bucket, storage = request.getfixturevalue("bucket"), request.getfixturevalue("s3_storage")
    uri = f"s3://{bucket}/runs/model"
    return uri, resolve(uri, storage).fs


@pytest.mark.s3
def test_load_gives_bit_identical_outputs(model, tokenizer, folder):
    uri, fs = folder
    trained_a_little(model, tokenizer)
    save_model(model, tokenizer, uri, fs=fs)
    loaded, loaded_tokenizer = load_model(uri, fs=fs)
    assert torch.equal(logits(loaded, loaded_tokenizer), logits(model, tokenizer))
    assert loaded.config == model.config
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_folder_layout_and_peft_files(model, tokenizer, tmp_path):
    save_model(trained_a_little(model, tokenizer), tokenizer, str(tmp_path / "m"))
    names = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    expected = {
        "p2med_config.json",
        "resampler.safetensors",
        "alignment.safetensors",
        "vision.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "llm/config.json",
        "llm/model.safetensors",
        "tokenizer/tokenizer.json",
    }
    assert expected <= names
    keys = load_file(tmp_path / "m/llm/model.safetensors")
    assert not [k for k in keys if "lora" in k or "base_layer" in k]  # a plain LLaMA


def test_merged_model_matches_and_round_trips(model, tokenizer, tmp_path):
    trained_a_little(model, tokenizer)
    before = logits(model, tokenizer)
    merged = merge_lora(model)
    assert merged.config.merged and not any("lora" in n for n, _ in merged.llm.named_parameters())
    torch.testing.assert_close(logits(merged, tokenizer), before, atol=1e-4, rtol=1e-4)
    save_model(merged, tokenizer, str(tmp_path / "merged"))
    assert not (tmp_path / "merged/adapter").exists()
    loaded, _ = load_model(str(tmp_path / "merged"))
    assert torch.equal(logits(loaded, tokenizer), logits(merged, tokenizer))


def test_load_with_merge_matches_the_adapter_model(model, tokenizer, tmp_path):
    save_model(trained_a_little(model, tokenizer), tokenizer, str(tmp_path / "m"))
    merged, _ = load_model(str(tmp_path / "m"), merge=True)
    torch.testing.assert_close(logits(merged, tokenizer), logits(model, tokenizer), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("p2med_config.json", "missing p2med_config.json"),
        ("resampler.safetensors", "missing resampler.safetensors"),
        ("adapter", "missing adapter/adapter_model.safetensors"),
        ("llm", "missing llm/"),
        ("tokenizer", "missing tokenizer/tokenizer.json"),
    ],
)
def test_an_incomplete_folder_names_what_is_missing(model, tokenizer, tmp_path, remove, message):
    save_model(model, tokenizer, str(tmp_path / "m"))
    target = tmp_path / "m" / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=message):
        load_model(str(tmp_path / "m"))


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_model(str(tmp_path / "nothing"))
