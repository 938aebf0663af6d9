"""The language model: `LlamaForCausalLM` with LoRA adapters from peft."""

from __future__ import annotations

import warnings

import peft
import torch
from peft import PeftModel, TaskType, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from p2med.model.config import LLMConfig, LoraConfig


def llama_config(
    config: LLMConfig, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> LlamaConfig:
    """The LLaMA settings of a randomly initialised LLM (sizes from `config`)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def new_llama(
    config: LLMConfig, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA of `config`'s sizes."""
    return LlamaForCausalLM(llama_config(config, vocab_size, pad_token_id, bos_token_id, eos_token_id))


def load_llama(directory: str, dtype: torch.dtype, device: torch.device | None = None) -> LlamaForCausalLM:
    """A LLaMA from a local Hugging Face folder, its weights read straight onto `device`
    (default: the CPU)."""
    return LlamaForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True, device_map=device)


def add_lora(llm: LlamaForCausalLM, settings: LoraConfig) -> PeftModel:
    """Wrap `llm` with LoRA adapters (B = 0 at first, so outputs do not change)."""
    config = peft.LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    with warnings.catch_warnings():  # transformers 5 deprecation noise raised inside peft
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(llm, config)


def base_state_dict(llm: PeftModel | LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The LLaMA's own weights without the LoRA adapters, under LLaMA's key names."""
    if not isinstance(llm, PeftModel):
        return llm.state_dict()
    state = {}
    for key, value in llm.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state
