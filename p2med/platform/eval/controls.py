"""Controls that show how much the images matter, run beside the model on the same samples.

- text_only: the same prompts with their `<image>` placeholders and images removed;
- shuffled_images: each sample gets the images of another patient's sample of the same
  task and image kinds (a rotation by one within each group, so none keeps its own);
- majority: no model; every sample of a task gets the same answer, the commonest training
  target of the training split's commonest diagnosis.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from itertools import groupby
from typing import Any

from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.prompts import task_sample
from p2med.platform.data.tasks import tasks_for
from p2med.platform.eval.benchmark import UNKNOWN, BenchSample, prompt_rows, row_diagnosis
from p2med.platform.storage import Location


def text_only(sample: BenchSample) -> BenchSample:
    prompt = sample.prompt.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "")
    return dataclasses.replace(sample, prompt=prompt, images=(), xray=None, ct=None)


def shuffled_images(samples: list[BenchSample], seed: int) -> list[BenchSample]:
    """`samples` in their order, images moved one place along a hashed order of each
    (task, image kinds) group; a group of one keeps its images (nothing to swap with)."""

    def group(s: BenchSample) -> tuple[str, tuple[str, ...]]:
        return s.task, s.images

    def order(s: BenchSample) -> bytes:
        return hashlib.blake2b(f"{seed}/{s.id}".encode(), digest_size=8).digest()

    donor: dict[str, BenchSample] = {}
    for _, members in groupby(sorted(samples, key=lambda s: (group(s), order(s))), key=group):
        ring = list(members)
        for i, sample in enumerate(ring):
            donor[sample.id] = ring[i - 1]
    return [
        dataclasses.replace(s, xray=donor[s.id].xray, ct=donor[s.id].ct) if s.images else s for s in samples
    ]


def majority_answers(shards: Location, manifest: dict[str, Any], tasks: list[str]) -> dict[str, str]:
    """Per task, the majority-class answer: among the training split's samples of its
    commonest diagnosis, the commonest target (ties: the first in sort order)."""
    rows = [(row, row_diagnosis(row)) for row in prompt_rows(shards, manifest, "train", False)]
    diagnoses = collections.Counter(d for _, d in rows if d != UNKNOWN)
    if not diagnoses:
        return {}
    commonest = min(diagnoses, key=lambda d: (-diagnoses[d], d))
    targets: dict[str, collections.Counter[str]] = {task: collections.Counter() for task in tasks}
    for row, diagnosis in rows:
        if diagnosis == commonest:
            for task in tasks_for(row):
                if task in targets:
                    targets[task][task_sample(row, task).target] += 1
    return {
        task: min(counter, key=lambda text: (-counter[text], text))
        for task, counter in targets.items()
        if counter
    }
