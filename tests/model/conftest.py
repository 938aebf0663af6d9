"""Tiny models and batches for the model tests (random init, deterministic)."""

from __future__ import annotations

import pytest
import torch

from p2med.model.interleave import Images
from p2med.model.presets import tiny
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer

CORPUS = [
    "Findings: Airspace consolidation in the right lower lobe. No pleural effusion.",
    "Impression: Right lower lobe pneumonia. Heart size is normal.",
    "Write the radiology report for this chest X-ray. Chest CT shows ground-glass opacity.",
] * 30
XRAY_SIZE, CT_SHAPE = 128, (16, 64, 64)  # the tiny preset's input shapes


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=600)


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    return tiny(tokenizer).eval()


def xrays(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, XRAY_SIZE, XRAY_SIZE, generator=torch.Generator().manual_seed(seed))


def cts(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, *CT_SHAPE, generator=torch.Generator().manual_seed(seed))


def right_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(t).input_ids for t in texts]
    length = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    return ids, mask


MIXED_TEXTS = [
    f"{IMAGE_TOKEN}\nWrite the report. Findings: consolidation in the right lower lobe.",
    f"{IMAGE_TOKEN}\nChest CT shows ground-glass opacity.",
    "Impression: pneumonia.",  # text only
    f"{IMAGE_TOKEN}{IMAGE_TOKEN} X-ray and CT. No pleural effusion.",
]


def some_findings(images: int, labels: int) -> torch.Tensor:
    """(images, labels) multi-hot targets of stage 2's finding loss, a different label each."""
    return torch.eye(labels)[torch.arange(images) % labels]


def mixed_images() -> Images:
    """Images for MIXED_TEXTS: X-ray; CT; none; X-ray then CT."""
    return Images([["xray"], ["ct"], [], ["xray", "ct"]], xray=xrays(2), ct=cts(2))
