"""The contrastive image-report loss: matched pairs score low, identical reports share."""

from __future__ import annotations

import math

import torch

from p2med.model.alignment import contrastive_loss


def test_matching_pairs_give_a_low_loss_and_swaps_a_high_one():
    texts = torch.tensor([[1, 2], [3, 4], [5, 6]])
    matched = torch.eye(3) * 20
    assert contrastive_loss(matched, texts) < 0.01
    swapped = matched[[1, 0, 2]]
    assert contrastive_loss(swapped, texts) > 5
    assert math.isclose(contrastive_loss(torch.zeros(3, 3), texts).item(), math.log(3), rel_tol=1e-6)


def test_identical_reports_are_all_correct_partners():
    texts = torch.tensor([[1, 2], [1, 2], [3, 4]])  # images 0 and 1 have the same report
    logits = torch.tensor([[20.0, 20.0, 0.0], [20.0, 20.0, 0.0], [0.0, 0.0, 20.0]])
    best = 2 * math.log(2) / 3  # the targets' own entropy: rows 0 and 1 split their match in two
    assert math.isclose(contrastive_loss(logits, texts).item(), best, rel_tol=1e-4)
    one_partner = torch.eye(3) * 20  # treating the twin report as a mistake is worse
    assert contrastive_loss(one_partner, texts) > best + 5
