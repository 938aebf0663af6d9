"""Benchmark samples -> generated answers, with a model in memory: what each actor of
`inference` computes, free of Ray (`bench/gpu_check.py` runs it on a bare GPU).

A sample is a dict with `prompt` and its `xray` and `ct` pixels as shard bytes (or None;
NaN where pandas saw a column without any image). A batch is generated in one go; when
that fails, its samples are generated one by one, so that the failing one is found and
answered with "" and the reason while the others are answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from p2med.model.generation import GenerationSettings, encode_prompts, generate
from p2med.model.interleave import MODALITIES, Images
from p2med.model.mllm import P2MedModel
from p2med.platform.data.shards import decode_pixels


class Answering:
    """Samples -> (answer, failure reason or "") each, greedy, at most `max_new_tokens`."""

    def __init__(
        self, model: P2MedModel, tokenizer: Any, shapes: dict[str, tuple[int, ...]], max_new_tokens: int
    ) -> None:
        self.model, self.tokenizer, self.shapes = model, tokenizer, shapes
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens)

    def answer(self, samples: list[dict[str, Any]]) -> list[tuple[str, str]]:
        try:
            return [(text, "") for text in self._generate(samples)]
        except Exception:  # find which sample fails: answer the rest one by one
            return [self._one(sample) for sample in samples]

    def _one(self, sample: dict[str, Any]) -> tuple[str, str]:
        try:
            return self._generate([sample])[0], ""
        except Exception as exc:  # recorded per sample; the message names shapes, never data
            return "", f"{type(exc).__name__}: {exc}"

    def _generate(self, samples: list[dict[str, Any]]) -> list[str]:
        ids, mask = encode_prompts(self.tokenizer, [sample["prompt"] for sample in samples])
        kinds = [[kind for kind in MODALITIES if isinstance(sample[kind], bytes)] for sample in samples]
        stacked = {}
        for kind in MODALITIES:
            pixels = [
                decode_pixels(sample[kind], self.shapes[kind])
                for sample in samples
                if isinstance(sample[kind], bytes)
            ]
            stacked[kind] = torch.from_numpy(np.stack(pixels)).to(self.model.device) if pixels else None
        images = Images(kinds, xray=stacked["xray"], ct=stacked["ct"])
        return generate(self.model, self.tokenizer, ids, mask, images, self.settings)
