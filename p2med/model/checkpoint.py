"""Save and load a P2Med-MLLM as a Hugging Face style folder, local or remote (s3://...).

    save_model(model, tokenizer, "s3://bucket/runs/stage3")
    model, tokenizer = load_model("s3://bucket/runs/stage3", merge=True)   # for serving

Layout:

    p2med_config.json         ModelConfig; written last, so a folder without it is incomplete
    resampler.safetensors     perceiver resampler and projection
    alignment.safetensors     the finding head (trained in stages 2 and 3; with alignment `slots`
                              its verdict feeds the LLM; empty with alignment `none`)
    vision.safetensors        vision encoder (CLIP weights only when not a pretrained, untrained CLIP)
    llm/                      the LLaMA base (config.json, model.safetensors) when it is not a
                              pretrained, untrained one (tiny always; paper once merged)
    adapter/                  peft LoRA files (adapter_config.json, adapter_model.safetensors)
    tokenizer/                tokenizer files
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from p2med.model.config import ModelConfig
from p2med.model.files import download, is_remote, local_path, remote, upload
from p2med.model.llm import base_state_dict
from p2med.model.mllm import P2MedModel
from p2med.model.presets import build_model
from p2med.model.tokenizer import load_tokenizer

CONFIG_FILE = "p2med_config.json"
REQUIRED = (
    CONFIG_FILE,
    "resampler.safetensors",
    "alignment.safetensors",
    "vision.safetensors",
    "tokenizer/tokenizer.json",
)
LLM_CONFIG, ADAPTER_WEIGHTS = "llm/config.json", "adapter/adapter_model.safetensors"
OPTIONAL = (LLM_CONFIG, ADAPTER_WEIGHTS)  # which of them a folder needs depends on its config


def save_model(
    model: P2MedModel, tokenizer: Any, uri: str, fs: fsspec.AbstractFileSystem | None = None
) -> None:
    """Write `model` and `tokenizer` to the folder `uri` (created if needed)."""
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="p2med-save-") as local:
            _write(model, tokenizer, Path(local))
            upload(local, uri, fs, last=CONFIG_FILE)  # config last, as on local disk
    else:
        _write(model, tokenizer, Path(local_path(uri)))


def load_model(
    uri: str,
    fs: fsspec.AbstractFileSystem | None = None,
    merge: bool = False,
    device: torch.device | None = None,
) -> tuple[P2MedModel, Any]:
    """The model and tokenizer saved at `uri`, in eval mode, on `device` (default: the CPU;
    the LLM's weights are read straight onto it); `merge` folds LoRA into the LLM.

    Raises:
        FileNotFoundError: the folder or a part of it is missing (named).
    """
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="p2med-load-") as local:
            download(uri, local, fs)
            return _read(Path(local), uri, fs, merge, device)
    return _read(Path(local_path(uri)), uri, fs, merge, device)


def merge_lora(model: P2MedModel) -> P2MedModel:
    """Fold the LoRA adapters into the LLM's weights (faster inference; no more LoRA training)."""
    if not model.config.merged:
        model.llm = model.llm.merge_and_unload()
        model.config = model.config.replace(merged=True)
    return model


def _write(model: P2MedModel, tokenizer: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).unlink(missing_ok=True)  # the folder is incomplete until the end
    config = model.config
    save_file(_contiguous(model.resampler.state_dict()), folder / "resampler.safetensors")
    save_file(_contiguous(model.alignment.state_dict()), folder / "alignment.safetensors")
    vision = model.vision.state_dict()
    if config.vision.pretrained and "vision" not in config.trained:  # the base folder has them
        vision = {k: v for k, v in vision.items() if not k.startswith("clip.")}
    save_file(_contiguous(vision), folder / "vision.safetensors")
    if not config.llm.pretrained or "llm_base" in config.trained or config.merged:
        base = model.llm if config.merged else model.llm.get_base_model()
        base.save_pretrained(folder / "llm", state_dict=base_state_dict(model.llm))
    if not config.merged:
        model.llm.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1) + "\n")


def check_model_folder(uri: str, fs: fsspec.AbstractFileSystem | None = None) -> ModelConfig:
    """The config of the model folder at `uri` (local or remote), without loading weights.

    Raises:
        FileNotFoundError: the folder or a part of it is missing (named).
    """
    fs, root = remote(uri, fs) if is_remote(uri) else (fsspec.filesystem("file"), local_path(uri))
    return _checked_config(fs, root, uri)


def _checked_config(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> ModelConfig:
    """The folder's config once every part the config calls for is there (else the error names them)."""
    if not fs.isdir(root):
        raise FileNotFoundError(f"no model folder at {uri}")
    present = {part for part in (*REQUIRED, *OPTIONAL) if fs.exists(f"{root.rstrip('/')}/{part}")}
    missing = [part for part in REQUIRED if part not in present]
    if CONFIG_FILE in missing:
        raise FileNotFoundError(f"model folder {uri} is incomplete: missing {', '.join(missing)}")
    config = ModelConfig.from_dict(json.loads(fs.cat_file(f"{root.rstrip('/')}/{CONFIG_FILE}")))
    if LLM_CONFIG not in present and (not config.llm.pretrained or config.merged):
        missing.append("llm/")
    if not config.merged and ADAPTER_WEIGHTS not in present:
        missing.append(ADAPTER_WEIGHTS)
    if missing:
        raise FileNotFoundError(f"model folder {uri} is incomplete: missing {', '.join(missing)}")
    return config


def _read(
    folder: Path, uri: str, fs: fsspec.AbstractFileSystem | None, merge: bool, device: torch.device | None
) -> tuple[P2MedModel, Any]:
    config = _checked_config(fsspec.filesystem("file"), str(folder), uri)
    has_llm = (folder / LLM_CONFIG).exists()
    tokenizer = load_tokenizer(folder / "tokenizer")
    model = build_model(
        config, tokenizer, fs, llm_folder=str(folder / "llm") if has_llm else None, device=device
    )
    _load_part(model.resampler, folder / "resampler.safetensors")
    _load_part(model.alignment, folder / "alignment.safetensors")
    clip_from_base = config.vision.pretrained and "vision" not in config.trained
    _load_part(model.vision, folder / "vision.safetensors", may_lack="clip." if clip_from_base else None)
    if not config.merged:
        result = set_peft_model_state_dict(model.llm, load_file(folder / ADAPTER_WEIGHTS))
        if result.unexpected_keys:
            raise ValueError(
                f"the LoRA adapter at {uri} does not fit the model: {result.unexpected_keys[:3]}"
            )
    if merge:
        merge_lora(model)
    return model.eval(), tokenizer


def _load_part(module: torch.nn.Module, file: Path, may_lack: str | None = None) -> None:
    """Load `file` into `module`; every key must fit, and only keys under `may_lack` may be absent."""
    missing, unexpected = module.load_state_dict(load_file(file), strict=False)
    missing = [k for k in missing if not (may_lack and k.startswith(may_lack))]
    if missing or unexpected:
        raise ValueError(
            f"{file.name} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items()}
