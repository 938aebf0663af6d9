"""Stage datasets: Parquet shards -> ready tensors for training stage 1, 2 or 3, streamed.

    ds = stage_dataset(resolve("s3://bucket/shards"), stage=3, split="train",
                       config=StageDataSettings(tokenizer="runs/tokenizer"))
    for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8): ...

Ray tasks read exactly the shard files the manifest lists (`shards`; local or s3://) and
turn their rows into samples (`prompts`), mix the stage-3 tasks, tokenise, truncate, pad and
decode the images, all in the workers. The batches are the model's training batches
(`p2med.model.batch`): L = max_length; S, D, H, W from the manifest's imaging config; labels
ignored on the prompt, `<image>` and padding; the task indexes `tasks.TASKS`; an image's
finding labels are what its own report states (read by the extractor), multi-hot over
`vocabulary.FINDING_LABELS`.

Stage 1 (text) has no image columns and no task column. Samples of one patient arrive
next to each other: shuffle when iterating (`local_shuffle_buffer_size`, `local_shuffle_seed`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from transformers import PreTrainedTokenizerFast

from p2med.model.batch import ATTENTION_MASK, INPUT_IDS, LABELS, TASK, findings_column, shown_column
from p2med.model.interleave import IGNORE_INDEX
from p2med.model.tokenizer import IMAGE_TOKEN, load_tokenizer
from p2med.platform.data.extract import VocabularyExtractor
from p2med.platform.data.ingest_plan import SPLITS
from p2med.platform.data.language import Language
from p2med.platform.data.prompts import (
    INSTRUCTIONS,
    Sample,
    image_report,
    row_language,
    row_texts,
    stage_samples,
)
from p2med.platform.data.shards import (
    IMAGE_COLUMNS,
    TEXT_COLUMNS,
    ShardFile,
    decode_pixels,
    image_shapes,
    read_manifest,
    read_shard,
    shard_files,
    split_rows,
)
from p2med.platform.data.stage_settings import StageDataSettings
from p2med.platform.data.tasks import TASKS, tasks_for
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.errors import P2MedError
from p2med.platform.storage import Location

ROWS_PER_BATCH = 16  # shard rows (patients) encoded at a time; stage 3 makes about 5 samples of each


@dataclass(frozen=True)
class StreamSpec:
    """Everything the row transform needs, resolved on the driver and shipped to workers."""

    stage: int
    split: str
    tokenizer: PreTrainedTokenizerFast
    max_length: int
    weights: dict[str, float]
    seed: int
    shapes: dict[str, tuple[int, ...]]  # image column -> pixel shape (`shards.image_shapes`)


@ray.remote(num_cpus=0)
class DroppedSamples:
    """Counts, per task, the samples the stream dropped because their prompt fills max_length."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, counts: dict[str, int]) -> None:
        self._counts.update(counts)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def stream_spec(manifest: dict[str, Any], stage: int, split: str, config: StageDataSettings) -> StreamSpec:
    """The transform's settings for a stage; fails here, on the driver, on bad arguments."""
    if stage not in (1, 2, 3):
        raise P2MedError(f"stage {stage!r} does not exist; training stages are 1, 2 and 3")
    if split not in SPLITS:
        raise P2MedError(f"split {split!r} does not exist; splits are {', '.join(SPLITS)}")
    weights = config.task_weights.model_dump()
    if stage == 3 and not any(weights.values()):
        raise P2MedError("every stage-3 task weight is 0; give at least one task a weight above 0")
    try:
        tokenizer = load_tokenizer(config.tokenizer)
    except (OSError, ValueError) as exc:
        raise P2MedError(f"tokenizer {config.tokenizer!r} cannot be loaded: {exc}") from None
    return StreamSpec(
        stage=stage,
        split=split,
        tokenizer=tokenizer,
        max_length=config.max_length,
        weights=weights,
        seed=config.seed,
        shapes=image_shapes(manifest),
    )


def columns_for(stage: int) -> list[str]:
    """Shard columns a stage reads: stage 1 skips the pixels."""
    return ["split", *TEXT_COLUMNS] if stage == 1 else ["patient", "split", *IMAGE_COLUMNS, *TEXT_COLUMNS]


def stage_dataset(
    shards: Location, stage: int, split: str, config: StageDataSettings, dropped: Any = None
) -> ray.data.Dataset:
    """The samples of `stage` from the `split` patients of an ingest, as a lazy Ray Dataset.

    One Ray task per shard file reads it and encodes its rows, so shard bytes never pass
    through the object store, and as many files run in parallel as there are CPUs (the
    ingest's `shard_target_mb` sets the file count).

    Args:
        dropped: a `DroppedSamples` actor handle that counts the samples skipped because
            their prompt alone fills max_length; None skips them uncounted.
    """
    manifest = read_manifest(shards)
    spec = stream_spec(manifest, stage, split, config)
    files = shard_files(shards, manifest)
    # Not ray.data.read_parquet: in Ray 2.60 it reads footers on an actor pool started for
    # every pass and bin-packs files into 128 MiB read tasks whatever override_num_blocks
    # says, so a small ingest's shards ran as one task on one CPU (docs/development.md).
    items = ray.data.from_items([asdict(f) for f in files], override_num_blocks=len(files))
    return items.map_batches(
        _encode_shards,
        fn_kwargs={"spec": spec, "filesystem": shards.arrow_filesystem(), "dropped": dropped},
        batch_size=1,
    )


def _encode_shards(
    batch: dict[str, np.ndarray], spec: StreamSpec, filesystem: Any, dropped: Any
) -> Iterator[dict[str, np.ndarray]]:
    """Ray task: shard files (`ShardFile` fields) -> blocks of encoded samples, streamed as
    they are made."""
    for path, sha256 in zip(batch["path"], batch["sha256"], strict=True):
        shard = ShardFile(str(path), str(sha256))
        for rows in read_shard(shard, filesystem, columns_for(spec.stage), ROWS_PER_BATCH):
            arrays, too_long = encode_rows(rows, spec)
            if too_long and dropped is not None:
                ray.get(dropped.add.remote(too_long))
            if len(arrays[INPUT_IDS]):
                yield arrays


def encode_rows(batch: pa.Table, spec: StreamSpec) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Shard rows -> the stage's batch columns (see the module docstring), and how many
    samples per task were dropped because their prompt fills max_length."""
    rows = batch.filter(pc.equal(batch["split"], spec.split)).to_pylist()
    pairs = [(row, sample) for row in rows for sample in _mixed(row, spec)]
    tok = spec.tokenizer
    prompts = tok([s.prompt for _, s in pairs], add_special_tokens=True).input_ids if pairs else []
    targets = tok([s.target for _, s in pairs], add_special_tokens=False).input_ids if pairs else []
    kept, too_long = [], collections.Counter()
    for (row, sample), prompt, target in zip(pairs, prompts, targets, strict=True):
        if len(prompt) >= spec.max_length:  # no room for a single target token
            too_long[sample.task] += 1
        else:
            kept.append((row, sample, prompt, [*target, tok.eos_token_id]))
    n, length = len(kept), spec.max_length
    out = {
        INPUT_IDS: np.full((n, length), tok.pad_token_id, dtype=np.int64),
        ATTENTION_MASK: np.zeros((n, length), dtype=np.int64),
        LABELS: np.full((n, length), IGNORE_INDEX, dtype=np.int64),
    }
    for i, (_, _, prompt, target) in enumerate(kept):
        sequence = prompt + target[: length - len(prompt)]
        out[INPUT_IDS][i, : len(sequence)] = sequence
        out[ATTENTION_MASK][i, : len(sequence)] = 1
        out[LABELS][i, len(prompt) : len(sequence)] = sequence[len(prompt) :]
    out[LABELS][out[INPUT_IDS] == tok.convert_tokens_to_ids(IMAGE_TOKEN)] = IGNORE_INDEX
    if spec.stage > 1:
        out |= _images(kept, spec)
        out |= _image_findings(kept)
        out[TASK] = np.array([TASKS.index(s.task) for _, s, _, _ in kept], dtype=np.int64)
    return out, dict(too_long)


def _image_findings(kept: list[tuple[dict, Sample, list, list]]) -> dict[str, np.ndarray]:
    """(N, K) float32 labels per image kind: the findings the image's report states, NaN
    rows where the sample shows no such image or the image has no report (no loss there).
    Every image a sample shows is labelled, whatever the task: stage 3 keeps the finding
    head a classifier while the LLM learns to read its verdict."""
    extractor = VocabularyExtractor()
    out = {}
    for kind in IMAGE_COLUMNS:
        labels = np.full((len(kept), len(FINDING_LABELS)), np.nan, dtype=np.float32)
        for i, (row, sample, _, _) in enumerate(kept):
            report = image_report(row, kind) if kind in sample.images else None
            if report is not None:
                labels[i] = 0.0
                for finding in extractor.findings(report):
                    labels[i, FINDING_LABELS.index(finding)] = 1.0
        out[findings_column(kind)] = labels
    return out


def _mixed(row: dict[str, Any], spec: StreamSpec) -> list[Sample]:
    samples = stage_samples(row, spec.stage)
    if spec.stage != 3:
        return samples
    return [
        s for s in samples for _ in range(copies(spec.weights[s.task], spec.seed, row["patient"], s.task))
    ]


def copies(weight: float, seed: int, patient: str, task: str) -> int:
    """How many times a (patient, task) pair enters stage 3: floor(weight), plus one more
    when a uniform draw keyed on (seed, patient, task) falls below weight's fraction."""
    digest = hashlib.blake2b(f"{seed}/{patient}/{task}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    whole = int(weight)
    return whole + int(draw < weight - whole)


def _images(kept: list[tuple[dict, Sample, list, list]], spec: StreamSpec) -> dict[str, np.ndarray]:
    """(N, S, S) and (N, D, H, W) float32 pixels with (N,) flags; zeros where a sample shows none."""
    out = {}
    for kind, shape in spec.shapes.items():
        pixels = np.zeros((len(kept), *shape), dtype=np.float32)
        shown = np.zeros(len(kept), dtype=np.int64)
        decoded: dict[int, np.ndarray] = {}  # a patient's samples share its images: convert once
        for i, (row, sample, _, _) in enumerate(kept):
            if kind in sample.images:
                if id(row) not in decoded:
                    decoded[id(row)] = decode_pixels(row[kind], shape)
                pixels[i] = decoded[id(row)]
                shown[i] = 1
        out[kind], out[shown_column(kind)] = pixels, shown
    return out


def corpus(shards: Location, split: str = "train") -> Iterator[str]:
    """Texts to train a tokenizer on: every report and record of the split's patients, and
    the instruction of each task they feed (so instructions weigh as in stage 3).

    Reads the text columns with pyarrow on the caller's process; no Ray needed.
    """
    for row in split_rows(shards, read_manifest(shards), split, TEXT_COLUMNS):
        yield from row_texts(row)
        yield from (INSTRUCTIONS[task] for task in tasks_for(row))


def split_language(shards: Location, split: str = "train", patients: int = 200) -> Language:
    """The language most of the split's patients' texts are written in, judged on the first
    `patients` of them (English for a split without any)."""
    rows = itertools.islice(split_rows(shards, read_manifest(shards), split, TEXT_COLUMNS), patients)
    votes = collections.Counter(row_language(row) for row in rows)
    return votes.most_common(1)[0][0] if votes else "en"
