"""The benchmark and its controls on the quick lane's small ingest, in this process: the
benchmark is drawn from the bench split only, the same every time, a share per task; the
controls take the images away, move them between samples of a group, or answer with the
training split's commonest target. End to end with the model on a local Ray: test_eval.py."""

from __future__ import annotations

import collections

from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.prompts import task_sample
from p2med.platform.data.shards import SHARD_SCHEMA, split_rows
from p2med.platform.data.tasks import TASKS, tasks_for
from p2med.platform.eval.benchmark import UNKNOWN, build_benchmark, row_diagnosis
from p2med.platform.eval.controls import majority_answers, shuffled_images, text_only
from p2med.platform.eval.settings import BenchmarkSettings

SAMPLES = 12  # two per task


def rows(small_ingest, split: str) -> dict[str, dict]:
    found = split_rows(small_ingest.shards, small_ingest.manifest, split, SHARD_SCHEMA.names)
    return {row["patient"]: row for row in found}


def test_the_benchmark_is_drawn_from_its_split_the_same_every_time(small_ingest):
    config = BenchmarkSettings(samples=SAMPLES)
    bench = build_benchmark(small_ingest.shards, small_ingest.manifest, config, "dev")
    assert bench.samples == build_benchmark(small_ingest.shards, small_ingest.manifest, config, "dev").samples
    patients = rows(small_ingest, "dev")
    for sample in bench.samples:
        patient, task = sample.id.split("/")
        row = patients[patient]
        assert task in tasks_for(row) and sample.diagnosis == row_diagnosis(row)
        expected = task_sample(row, task)
        assert (sample.prompt, sample.reference, list(sample.images)) == (
            expected.prompt,
            expected.target,
            expected.images,
        )
        assert sample.xray == (row["xray"] if "xray" in sample.images else None)
    per_task = collections.Counter(sample.task for sample in bench.samples)
    for task in TASKS:  # a share of two each, or all the bench split has
        feeding = sum(task in tasks_for(row) for row in patients.values())
        assert per_task[task] == min(2, feeding) and bench.shortfall.get(task, 0) == 2 - per_task[task]


def test_the_image_controls_remove_or_swap_images_within_a_group(small_ingest):
    samples = build_benchmark(
        small_ingest.shards, small_ingest.manifest, BenchmarkSettings(samples=SAMPLES), "dev"
    ).samples
    with_images = [s for s in samples if s.images]
    assert with_images

    for sample in with_images:
        blind = text_only(sample)
        assert IMAGE_TOKEN not in blind.prompt and not blind.images and blind.xray is blind.ct is None
        assert blind.reference == sample.reference and blind.id == sample.id

    shuffled = shuffled_images(samples, seed=0)
    assert [s.id for s in shuffled] == [s.id for s in samples]
    assert [s.prompt for s in shuffled] == [s.prompt for s in samples]
    groups = collections.defaultdict(list)
    for before, after in zip(samples, shuffled, strict=True):
        groups[before.task, before.images].append((before, after))
    swapped = 0
    for pairs in groups.values():
        images_before = sorted((b.xray or b"", b.ct or b"") for b, _ in pairs)
        assert sorted((a.xray or b"", a.ct or b"") for _, a in pairs) == images_before  # moved, not lost
        if len(pairs) > 1 and pairs[0][0].images:
            swapped += 1
            assert all((a.xray, a.ct) != (b.xray, b.ct) for b, a in pairs)  # each gets another's
        else:
            assert all((a.xray, a.ct) == (b.xray, b.ct) for b, a in pairs)
    assert swapped


def test_the_majority_control_answers_the_commonest_diagnosis_commonest_target(small_ingest):
    answers = majority_answers(small_ingest.shards, small_ingest.manifest, list(TASKS))
    train = list(rows(small_ingest, "train").values())
    diagnoses = collections.Counter(row_diagnosis(row) for row in train) - collections.Counter(
        {UNKNOWN: 10**9}
    )
    commonest = min(diagnoses, key=lambda d: (-diagnoses[d], d))
    assert answers
    for task, answer in answers.items():
        targets = collections.Counter(
            task_sample(row, task).target
            for row in train
            if row_diagnosis(row) == commonest and task in tasks_for(row)
        )
        assert targets[answer] == max(targets.values())  # a training target, the commonest
