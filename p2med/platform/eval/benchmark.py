"""The benchmark: P2Med-MBench-style samples from the `dev` or `test` split of an ingest.

    shards = resolve("s3://bucket/shards")
    bench = build_benchmark(shards, read_manifest(shards), BenchmarkSettings(), "dev")

642 samples by default (the paper's size) over the six tasks: an equal share per task,
and within a task as even a mix of diagnoses as the split allows (round robin over the
diagnoses, a patient at most once per task). Deterministic: within a diagnosis, patients
are ordered by a hash of (seed, patient, task), so the same shards and seed give the same
benchmark and another seed another draw. Prompts and references are the stage-3 samples
of `p2med.platform.data.prompts`, exactly what the model was tuned on.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from p2med.platform.data.extract import VocabularyExtractor
from p2med.platform.data.prompts import row_wording, task_sample
from p2med.platform.data.shards import IMAGE_COLUMNS, TEXT_COLUMNS, image_shapes, split_rows
from p2med.platform.data.tasks import tasks_for
from p2med.platform.data.vocabulary import DIAGNOSES
from p2med.platform.errors import P2MedError
from p2med.platform.eval.settings import BenchmarkSettings
from p2med.platform.storage import Location

UNKNOWN = "unknown"  # the diagnosis of a patient without a record
_EXTRACTOR = VocabularyExtractor()


@dataclass(frozen=True)
class BenchSample:
    """One benchmark question: the model reads `prompt` with its images and is scored
    against `reference`."""

    id: str  # "<patient pseudonym>/<task>": de-identified, stable across runs
    task: str
    diagnosis: str  # the patient's recorded diagnosis (a vocabulary label) or "unknown"
    prompt: str
    reference: str
    images: tuple[str, ...]  # "xray" / "ct", one per `<image>` in `prompt`, in order
    xray: bytes | None  # the shard's pixels (`shards.decode_pixels`)
    ct: bytes | None


@dataclass
class Benchmark:
    samples: list[BenchSample]
    shapes: dict[str, tuple[int, ...]]  # image column -> pixel shape (`shards.image_shapes`)
    shortfall: dict[str, int] = field(default_factory=dict)  # task -> samples missing from its share

    def counts(self) -> dict[str, Any]:
        """Samples per task and per diagnosis (for the report's header)."""
        return {
            "samples": len(self.samples),
            "tasks": dict(collections.Counter(s.task for s in self.samples)),
            "diagnoses": dict(collections.Counter(s.diagnosis for s in self.samples)),
        }


def build_benchmark(
    shards: Location, manifest: dict[str, Any], config: BenchmarkSettings, split: str
) -> Benchmark:
    """The benchmark of `config` from the `split` of the ingest at `shards` (`manifest`:
    its manifest, `shards.read_manifest`).

    Raises:
        P2MedError: the split holds no patients.
    """
    candidates: dict[str, dict[str, list[tuple[bytes, BenchSample]]]] = {
        task: collections.defaultdict(list) for task in config.tasks
    }
    patients = 0
    for row in prompt_rows(shards, manifest, split):
        patients += 1
        diagnosis = row_diagnosis(row)
        for task in tasks_for(row):
            if task in candidates:
                key = hashlib.blake2b(f"{config.seed}/{row['patient']}/{task}".encode(), digest_size=8)
                candidates[task][diagnosis].append((key.digest(), _bench_sample(row, task, diagnosis)))
    if patients == 0:
        raise P2MedError(
            f"the {split} split of {shards.uri} holds no patients: ingest with "
            f"split.{split}_fraction above 0 (and enough patients that some land in it)"
        )
    samples, shortfall = [], {}
    for i, task in enumerate(config.tasks):
        share = config.samples // len(config.tasks) + (i < config.samples % len(config.tasks))
        chosen = _round_robin(candidates[task], share)
        samples += chosen
        if len(chosen) < share:
            shortfall[task] = share - len(chosen)
    return Benchmark(samples, image_shapes(manifest), shortfall)


def prompt_rows(
    shards: Location, manifest: dict[str, Any], split: str, pixels: bool = True
) -> Iterator[dict[str, Any]]:
    """The rows (dicts) of one split, shard by shard. Without `pixels`, the image columns
    hold b"" for an image that is there (the ingest keeps an image exactly when its report
    is kept), so the prompts come out the same without reading any pixel."""
    columns = ["patient", "split", *TEXT_COLUMNS] + (list(IMAGE_COLUMNS) if pixels else [])
    for row in split_rows(shards, manifest, split, columns):
        if not pixels:
            row |= {kind: b"" if row[f"{kind}_report"] is not None else None for kind in IMAGE_COLUMNS}
        yield row


def row_diagnosis(row: dict[str, Any]) -> str:
    """The diagnosis a patient's record states, as a vocabulary label ("unknown" without one),
    read as the diagnosis task's target states it, in the record's language."""
    words = row_wording(row)
    for column, section in (("outpatient", "diagnosis"), ("inpatient", "discharge_diagnosis")):
        if row.get(column) is not None:
            stated = json.loads(row[column]).get(section, "")
            label = _EXTRACTOR.diagnosis(f"{words.diagnosis}{words.colon}{stated}")
            if label is not None:
                return label
    return UNKNOWN


def _bench_sample(row: dict[str, Any], task: str, diagnosis: str) -> BenchSample:
    sample = task_sample(row, task)
    return BenchSample(
        id=f"{row['patient']}/{task}",
        task=task,
        diagnosis=diagnosis,
        prompt=sample.prompt,
        reference=sample.target,
        images=tuple(sample.images),
        xray=row["xray"] if "xray" in sample.images else None,
        ct=row["ct"] if "ct" in sample.images else None,
    )


def _round_robin(by_diagnosis: dict[str, list[tuple[bytes, BenchSample]]], share: int) -> list[BenchSample]:
    """Up to `share` samples, one diagnosis after another in vocabulary order, each
    diagnosis's samples in hash order, so every diagnosis gets an equal part while it lasts."""
    queues = [
        collections.deque(s for _, s in sorted(by_diagnosis[d], key=lambda pair: pair[0]))
        for d in (*DIAGNOSES, UNKNOWN)
        if by_diagnosis.get(d)
    ]
    chosen: list[BenchSample] = []
    while len(chosen) < share and any(queues):
        for queue in queues:
            if queue and len(chosen) < share:
                chosen.append(queue.popleft())
    return chosen
