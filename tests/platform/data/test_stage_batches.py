"""Shard rows -> a stage's batch columns, in this process (what each Ray task of
`stage_dataset` runs): every sample of the split's rows, its labels only on its target,
images where it shows them; and bad arguments refused on the driver. The same streamed by
Ray Data: test_stage_datasets.py."""

from __future__ import annotations

import numpy as np
import pytest

from p2med.model.batch import ATTENTION_MASK, INPUT_IDS, LABELS, TASK, shown_column
from p2med.model.interleave import IGNORE_INDEX
from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.prompts import INSTRUCTIONS, row_texts, stage_samples
from p2med.platform.data.shards import SHARD_SCHEMA, read_shard, shard_files, split_rows
from p2med.platform.data.stage_datasets import columns_for, corpus, encode_rows, stage_dataset, stream_spec
from p2med.platform.data.stage_settings import StageDataSettings, TaskWeights
from p2med.platform.data.tasks import TASKS, tasks_for
from p2med.platform.errors import P2MedError

MAX_LENGTH = 384


def encoded(small_ingest, config: StageDataSettings, stage: int, split: str = "train"):
    """The stream spec, the split's rows, and what `encode_rows` makes of the shard."""
    manifest, shards = small_ingest.manifest, small_ingest.shards
    spec = stream_spec(manifest, stage, split, config)
    [shard] = shard_files(shards, manifest)
    [table] = read_shard(shard, shards.arrow_filesystem(), columns_for(stage), rows=1000)
    rows = list(split_rows(shards, manifest, split, SHARD_SCHEMA.names))
    return spec, rows, *encode_rows(table, spec)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_sample_of_the_split_is_encoded_with_labels_on_its_target_only(
    small_ingest, small_tokenizer_dir, stage
):
    config = StageDataSettings(tokenizer=small_tokenizer_dir, max_length=MAX_LENGTH)
    spec, rows, out, too_long = encoded(small_ingest, config, stage)
    samples = [sample for row in rows for sample in stage_samples(row, stage)]
    assert not too_long and len(out[INPUT_IDS]) == len(samples) > 0
    ids, mask, labels = out[INPUT_IDS], out[ATTENTION_MASK], out[LABELS]
    assert ids.shape == mask.shape == labels.shape == (len(samples), MAX_LENGTH)
    eos = spec.tokenizer.eos_token_id
    for i, sample in enumerate(samples):
        length = int(mask[i].sum())
        assert mask[i, :length].all() and not mask[i, length:].any()
        target = np.flatnonzero(labels[i] != IGNORE_INDEX)
        prompt_length = len(spec.tokenizer(sample.prompt).input_ids)
        assert target.tolist() == list(range(prompt_length, length))  # the target, to the end
        assert ids[i, length - 1] == eos or length == MAX_LENGTH
    assert not (labels == spec.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).any()
    if stage == 1:
        assert set(out) == {INPUT_IDS, ATTENTION_MASK, LABELS}
        return
    assert [TASKS[t] for t in out[TASK]] == [sample.task for sample in samples]
    for kind, shape in spec.shapes.items():
        shown = np.array([kind in sample.images for sample in samples])
        assert out[kind].shape == (len(samples), *shape)
        assert (out[shown_column(kind)] == shown).all()
        pixels = out[kind].reshape(len(samples), -1)
        assert (pixels[~shown] == 0).all() and (pixels[shown].std(axis=1) > 0).all()


def test_stage_3_repeats_a_task_by_its_weight(small_ingest, small_tokenizer_dir):
    weights = TaskWeights(**dict.fromkeys(TASKS, 0.0) | {"xray_report": 2.0})
    config = StageDataSettings(tokenizer=small_tokenizer_dir, max_length=MAX_LENGTH, task_weights=weights)
    _, rows, out, _ = encoded(small_ingest, config, 3)
    feeding = sum("xray_report" in tasks_for(row) for row in rows)
    assert [TASKS[t] for t in out[TASK]] == ["xray_report"] * 2 * feeding > []


def test_the_tokenizer_corpus_is_the_train_splits_texts_and_their_instructions(small_ingest):
    texts = list(corpus(small_ingest.shards))
    manifest = small_ingest.manifest
    train = list(split_rows(small_ingest.shards, manifest, "train", SHARD_SCHEMA.names))
    bench = list(split_rows(small_ingest.shards, manifest, "dev", SHARD_SCHEMA.names))
    assert set(texts) >= {text for row in train for text in row_texts(row)}
    assert not {text for row in bench for text in row_texts(row)} & set(texts)
    assert texts.count(INSTRUCTIONS["xray_report"]) == sum("xray_report" in tasks_for(r) for r in train)


def test_bad_arguments_are_refused_before_any_ray_task(small_ingest, small_tokenizer_dir, tmp_path):
    shards = small_ingest.shards
    config = StageDataSettings(tokenizer=small_tokenizer_dir)
    with pytest.raises(P2MedError, match="stage 4 does not exist"):
        stage_dataset(shards, 4, "train", config)
    with pytest.raises(P2MedError, match="split 'bench' does not exist"):
        stage_dataset(shards, 3, "bench", config)
    no_tasks = config.model_copy(update={"task_weights": TaskWeights(**dict.fromkeys(TASKS, 0.0))})
    with pytest.raises(P2MedError, match="every stage-3 task weight is 0"):
        stage_dataset(shards, 3, "train", no_tasks)
    with pytest.raises(P2MedError, match="cannot be loaded: no tokenizer"):
        stage_dataset(shards, 1, "train", StageDataSettings(tokenizer=str(tmp_path / "none")))
