"""Stage datasets: shards -> torch batches for stages 1-3, on local disk and on S3.

The stream's samples are checked against samples derived here, on the driver, from the
same shards with `prompts` and the tokenizer alone: same multiset of (prompt ids,
target ids), so labels are -100 exactly on prompt, `<image>` and padding positions.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import boto3
import pytest
import torch

from p2med.model.interleave import IGNORE_INDEX
from p2med.model.tokenizer import IMAGE_TOKEN, load_tokenizer, train_bpe_tokenizer
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.extract import VocabularyExtractor
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import ingest
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.prompts import INSTRUCTIONS, RECORD_INPUTS, image_report, stage_samples
from p2med.platform.data.shards import SHARD_SCHEMA, read_manifest, split_rows
from p2med.platform.data.stage_datasets import DroppedSamples, copies, corpus, stage_dataset
from p2med.platform.data.stage_settings import StageDataSettings, TaskWeights
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.data.tasks import TASKS
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.errors import P2MedError
from p2med.platform.storage import Location, resolve

pytestmark = pytest.mark.slow  # the shards come from an ingest on a local Ray, the datasets are Ray's

IMAGING = ImagingSettings(xray_size=64, ct_slices=8, ct_size=32)
XRAY, CT = (64, 64), (8, 32, 32)
MAX_LENGTH = 384  # room for every prompt of this data, so only targets are cut


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory, ray_local) -> Location:
    root = tmp_path_factory.mktemp("stage")
    synth = SynthSettings(
        patients=24, ct_fraction=0.5, xray_size=128, ct_slices=12, ct_size=48, workers=1, seed=5
    )
    generate(synth, resolve(str(root / "raw")), progress=False)
    shards = resolve(str(root / "shards"))
    ingest(
        resolve(str(root / "raw")), shards, IngestSettings(imaging=IMAGING, deid=DeidSettings(key="test-key"))
    )
    return shards


@pytest.fixture(scope="module")
def s3_shards(local_shards, s3_storage) -> Location:
    """The same shards, uploaded to a bucket of the local S3 server."""
    bucket = "p2med-stage-datasets"
    boto3.client(
        "s3",
        endpoint_url=s3_storage.endpoint_url,
        aws_access_key_id=s3_storage.access_key_id,
        aws_secret_access_key=s3_storage.secret_access_key.get_secret_value(),
        region_name=s3_storage.region,
    ).create_bucket(Bucket=bucket)
    shards = resolve(f"s3://{bucket}/shards", s3_storage)
    for name in local_shards.list_files():
        shards.join(name).write_bytes(local_shards.join(name).read_bytes())
    return shards


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def shards(request) -> Location:
    return request.getfixturevalue(f"{request.param}_shards")


@pytest.fixture(scope="module")
def tokenizer_dir(local_shards, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(corpus(local_shards), vocab_size=1024).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def config(tokenizer_dir: str, **changes) -> StageDataSettings:
    return StageDataSettings(tokenizer=tokenizer_dir, max_length=MAX_LENGTH, **changes)


def shard_rows(shards: Location, split: str) -> list[dict]:
    return list(split_rows(shards, read_manifest(shards), split, SHARD_SCHEMA.names))


def batches(ds) -> list[dict[str, torch.Tensor]]:
    return list(ds.iter_torch_batches(batch_size=4))


def stream_pairs(found: list[dict[str, torch.Tensor]]) -> collections.Counter:
    """(prompt ids, target ids) of every streamed sample, checking on the way that the
    prompt is a prefix, the target follows it, and padding trails both."""
    pairs = collections.Counter()
    for batch in found:
        for ids, mask, labels in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
        ):
            length = int(mask.sum())
            assert mask[:length].all() and not mask[length:].any()
            assert (labels[length:] == IGNORE_INDEX).all()
            learnt = (labels != IGNORE_INDEX).nonzero().flatten()
            start = int(learnt[0])
            assert learnt.tolist() == list(range(start, length)), "target positions must be contiguous"
            assert (labels[start:length] == ids[start:length]).all()
            pairs[tuple(ids[:start].tolist()), tuple(ids[start:length].tolist())] += 1
    return pairs


def expected_pairs(rows: list[dict], stage: int, tok, max_length: int = MAX_LENGTH) -> collections.Counter:
    pairs = collections.Counter()
    for row in rows:
        for sample in stage_samples(row, stage):
            prompt = tok(sample.prompt).input_ids
            target = [*tok(sample.target, add_special_tokens=False).input_ids, tok.eos_token_id]
            if len(prompt) < max_length:
                pairs[tuple(prompt), tuple(target[: max_length - len(prompt)])] += 1
    return pairs


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_batches_are_ready_tensors(shards, stage, tokenizer_dir):
    found = batches(stage_dataset(shards, stage, "train", config(tokenizer_dir)))
    text_keys = {"input_ids", "attention_mask", "labels"}
    image_keys = {"xray", "ct", "has_xray", "has_ct", "task"}
    image_keys |= {"xray_findings", "ct_findings"}
    keys = text_keys if stage == 1 else text_keys | image_keys
    assert found and all(set(b) == keys for b in found)
    assert all(len(b["input_ids"]) == 4 for b in found[:-1])
    for batch in found:
        n = len(batch["input_ids"])
        for key in text_keys:
            assert batch[key].dtype == torch.int64 and batch[key].shape == (n, MAX_LENGTH)
        if stage == 1:
            continue
        assert batch["xray"].dtype == batch["ct"].dtype == torch.float32
        assert batch["xray"].shape == (n, *XRAY) and batch["ct"].shape == (n, *CT)
        for kind in ("xray", "ct"):
            flags = batch[f"has_{kind}"]
            assert flags.dtype == torch.int64 and flags.shape == (n,)
            pixels = batch[kind].flatten(1)
            assert (pixels[flags == 0] == 0).all() and (pixels[flags == 1].amax(1) > 0).all()
            assert pixels.min() >= 0 and pixels.max() <= 1
        assert batch["task"].dtype == torch.int64 and batch["task"].shape == (n,)
        if stage == 2:  # one image per sample, and the report of that modality
            assert (batch["has_xray"] + batch["has_ct"] == 1).all()
            assert (batch["task"] == torch.where(batch["has_xray"] == 1, 0, 1)).all()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_labels_ignore_exactly_prompt_image_and_padding(local_shards, stage, tokenizer_dir, tok):
    found = batches(stage_dataset(local_shards, stage, "train", config(tokenizer_dir)))
    assert stream_pairs(found) == expected_pairs(shard_rows(local_shards, "train"), stage, tok)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for batch in found:
        assert not (batch["labels"] == image_id).any()
        if stage > 1:  # one `<image>` per image the sample carries
            shown = batch["has_xray"] + batch["has_ct"]
            assert ((batch["input_ids"] == image_id).sum(1) == shown).all()


@pytest.mark.parametrize("stage", [2, 3])
def test_every_image_is_labelled_with_the_findings_of_its_own_report(local_shards, stage, tokenizer_dir):
    found = batches(stage_dataset(local_shards, stage, "train", config(tokenizer_dir)))
    streamed = collections.Counter()
    for batch in found:
        for kind in ("xray", "ct"):
            labels, shown = batch[f"{kind}_findings"], batch[f"has_{kind}"] == 1
            assert labels.dtype == torch.float32 and labels.shape == (len(shown), len(FINDING_LABELS))
            assert labels[~shown].isnan().all()
            for row in labels[shown]:
                stated = frozenset(FINDING_LABELS[i] for i in row.nonzero().flatten().tolist())
                streamed[kind, None if row.isnan().any() else stated] += 1
    extractor = VocabularyExtractor()
    expected = collections.Counter()
    for row in shard_rows(local_shards, "train"):
        for sample in stage_samples(row, stage):
            for kind in sample.images:
                report = image_report(row, kind)
                expected[kind, None if report is None else frozenset(extractor.findings(report))] += 1
    assert streamed == expected
    assert {kind for kind, _ in streamed} == {"xray", "ct"}
    assert any(stated for _, stated in streamed) and any(stated == frozenset() for _, stated in streamed)


def test_stage3_prompts_never_show_what_only_images_show(local_shards, tokenizer_dir, tok):
    found = batches(stage_dataset(local_shards, 3, "train", config(tokenizer_dir)))
    prompts = [tok.decode(p) for p, _ in stream_pairs(found)]
    targets = [tok.decode(t) for _, t in stream_pairs(found)]
    assert not any("lobe" in p for p in prompts)
    assert any("lobe" in t for t in targets)
    for row in shard_rows(local_shards, "train"):
        records = [json.loads(row[k]) for k in ("outpatient", "inpatient") if row[k]]
        reports = [json.loads(row[k]) for k in ("xray_report", "ct_report") if row[k]]
        secrets = [r["imaging"] for r in records] + [
            r[p] for r in reports for p in ("findings", "impression")
        ]
        for sample in stage_samples(row, 3):
            assert not any(secret in sample.prompt for secret in secrets), sample.task
            assert "Imaging:" not in sample.prompt
            if sample.task.endswith("_report"):  # no history: symptoms would give the finding type away
                assert sample.prompt == f"{IMAGE_TOKEN}\n{INSTRUCTIONS[sample.task]}"


def test_record_tasks_show_images_and_keep_imaging_only_when_grounded(local_shards):
    rows = shard_rows(local_shards, "train")
    seen = collections.Counter()
    for row in rows:
        for sample in stage_samples(row, 3):
            assert sample.prompt.count(IMAGE_TOKEN) == len(sample.images)
            assert sample.images == [k for k in ("xray", "ct") if k in sample.images]  # X-ray first
            if sample.task in ("outpatient_record", "inpatient_record"):
                shows_ct = "Chest CT:" in json.loads(row[sample.task.removesuffix("_record")])["imaging"]
                has_imaging = sample.target.startswith("Imaging:")
                assert has_imaging == (not shows_ct or "ct" in sample.images)
                seen[sample.task, has_imaging] += 1
            for section in RECORD_INPUTS["outpatient"]:
                assert f"{section.replace('_', ' ').capitalize()}:" not in sample.target
    assert seen["outpatient_record", True] > 0


def test_zero_weight_removes_a_task_and_weights_repeat_pairs(local_shards, tokenizer_dir):
    def task_counts(weights: TaskWeights) -> collections.Counter:
        found = batches(stage_dataset(local_shards, 3, "train", config(tokenizer_dir, task_weights=weights)))
        return collections.Counter(TASKS[int(t)] for b in found for t in b["task"])

    every = task_counts(TaskWeights())
    assert set(every) == set(TASKS)
    mixed = task_counts(TaskWeights(xray_report=0, inpatient_record=0, treatment_recommendation=2))
    assert "xray_report" not in mixed and "inpatient_record" not in mixed
    assert mixed["treatment_recommendation"] == 2 * every["treatment_recommendation"]
    assert mixed["ct_report"] == every["ct_report"]


def test_fractional_weights_follow_the_seed(local_shards, tokenizer_dir, tok):
    halves = TaskWeights(**dict.fromkeys(TASKS, 0.5))

    def samples(seed: int) -> collections.Counter:
        settings = config(tokenizer_dir, task_weights=halves, seed=seed)
        return stream_pairs(batches(stage_dataset(local_shards, 3, "train", settings)))

    first, again, other = samples(1), samples(1), samples(2)
    assert first == again
    assert first != other
    every = expected_pairs(shard_rows(local_shards, "train"), 3, tok)
    assert 0 < first.total() < every.total() and not first - every


def test_copies_semantics():
    assert {copies(1.0, 0, f"p{i}", "ct_report") for i in range(100)} == {1}
    assert {copies(0.0, 0, f"p{i}", "ct_report") for i in range(100)} == {0}
    drawn = [copies(2.25, 7, f"p{i}", "ct_report") for i in range(2000)]
    assert set(drawn) == {2, 3} and 0.2 < drawn.count(3) / 2000 < 0.3
    assert drawn == [copies(2.25, 7, f"p{i}", "ct_report") for i in range(2000)]


def test_bench_split_holds_only_bench_patients(shards, tokenizer_dir, tok):
    found = stream_pairs(batches(stage_dataset(shards, 3, "dev", config(tokenizer_dir))))
    assert found and found == expected_pairs(shard_rows(shards, "dev"), 3, tok)
    # report prompts are the image and the instruction alone, so a normal report's text
    # recurs across patients: the patient shows in the record tasks' prompts
    reports = ("xray_report", "ct_report")
    generic = {tuple(tok(f"{IMAGE_TOKEN}\n{INSTRUCTIONS[t]}").input_ids) for t in reports}
    train = expected_pairs(shard_rows(shards, "train"), 3, tok)
    assert not {pair for pair in set(found) & set(train) if pair[0] not in generic}


def test_prompts_that_fill_max_length_are_dropped_and_counted(local_shards, tokenizer_dir, tok, ray_local):
    dropped = DroppedSamples.remote()
    short = 48  # report prompts fit, record prompts do not
    settings = StageDataSettings(tokenizer=tokenizer_dir, max_length=short)
    found = batches(stage_dataset(local_shards, 3, "train", settings, dropped=dropped))
    counts = ray_local.get(dropped.counts.remote())
    kept = collections.Counter(TASKS[int(t)] for b in found for t in b["task"])
    every = expected_pairs(shard_rows(local_shards, "train"), 3, tok, max_length=10_000).total()
    assert kept.total() + sum(counts.values()) == every
    assert counts.get("outpatient_record", 0) > 0 and kept["xray_report"] > 0
    assert stream_pairs(found) == expected_pairs(shard_rows(local_shards, "train"), 3, tok, max_length=short)


def test_corpus_covers_the_split_and_the_instructions(local_shards):
    texts = list(corpus(local_shards, split="train"))
    train = {
        json.loads(r["outpatient"])["history"] for r in shard_rows(local_shards, "train") if r["outpatient"]
    }
    bench = {
        json.loads(r["outpatient"])["history"] for r in shard_rows(local_shards, "dev") if r["outpatient"]
    }
    joined = "\n".join(texts)
    assert all(h in joined for h in train) and not any(h in joined for h in bench)
    assert set(INSTRUCTIONS.values()) <= set(texts)


def test_bad_arguments_fail_on_the_driver(local_shards, tokenizer_dir, tmp_path):
    with pytest.raises(P2MedError, match="stage 4"):
        stage_dataset(local_shards, 4, "train", config(tokenizer_dir))
    with pytest.raises(P2MedError, match="split 'bench'"):
        stage_dataset(local_shards, 3, "bench", config(tokenizer_dir))
    with pytest.raises(P2MedError, match="every stage-3 task weight is 0"):
        stage_dataset(
            local_shards,
            3,
            "train",
            config(tokenizer_dir, task_weights=TaskWeights(**dict.fromkeys(TASKS, 0.0))),
        )
    with pytest.raises(P2MedError, match=r"no manifest\.json"):
        stage_dataset(resolve(str(tmp_path)), 1, "train", config(tokenizer_dir))
    with pytest.raises(P2MedError, match="no tokenizer"):
        stage_dataset(local_shards, 1, "train", StageDataSettings(tokenizer=str(Path(tmp_path) / "none")))
