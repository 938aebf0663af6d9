"""The training loop's batch stream: every row once per pass, rows of similar length
together, and batches of one size only."""

from __future__ import annotations

import numpy as np
import ray
import torch

from p2med.platform.train.config import DataSettings, TrainSettings
from p2med.platform.train.loop import endless_batches


def rows(lengths: list[int], images: list[int], width: int = 64) -> list[dict]:
    return [
        {
            "id": i,
            "attention_mask": np.array([1] * n + [0] * (width - n), dtype=np.int64),
            "has_xray": np.int64(shown),
        }
        for i, (n, shown) in enumerate(zip(lengths, images, strict=True))
    ]


def test_batches_group_rows_of_similar_length_and_cover_every_row(ray_local):
    rng = np.random.default_rng(0)
    lengths, images = rng.integers(4, 60, 64).tolist(), rng.integers(0, 2, 64).tolist()
    data = ray.data.from_items(rows(lengths, images))
    settings = TrainSettings(data=DataSettings(length_group=4, shuffle_buffer=0))
    stream = endless_batches(data, 4, settings, torch.device("cpu"), image_slots=40)
    batches = [next(stream) for _ in range(16)]  # one pass: 64 rows
    assert all(len(b["id"]) == 4 for b in batches)
    assert sorted(torch.cat([b["id"] for b in batches]).tolist()) == list(range(64))

    def seen_length(batch):  # what the LLM reads: text plus 40 positions per image
        return batch["attention_mask"].sum(1) + 39 * batch["has_xray"]

    padded = sum(int(seen_length(b).max()) for b in batches)
    ungrouped = endless_batches(
        data, 4, TrainSettings(data=DataSettings(length_group=1, shuffle_buffer=0)), torch.device("cpu"), 40
    )
    padded_before = sum(int(seen_length(next(ungrouped)).max()) for _ in range(16))
    assert padded < 0.85 * padded_before


def test_a_short_last_group_yields_only_whole_batches(ray_local):
    data = ray.data.from_items(rows([5] * 10, [0] * 10))  # 10 rows, groups of 8, batches of 4
    stream = endless_batches(data, 4, TrainSettings(data=DataSettings(length_group=2)), torch.device("cpu"))
    sizes = [len(next(stream)["id"]) for _ in range(6)]
    assert sizes == [4] * 6  # 2 whole batches per pass (8 + 2 rows: the 2 are dropped)
