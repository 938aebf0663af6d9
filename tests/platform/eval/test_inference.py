"""The eval's Predictor in this process (each Ray Data actor runs one): a batch of benchmark
samples gets its answers; a sample that cannot be generated gets its reason and the rest
are answered; and an evaluation without a model is refused before anything runs. On a
local Ray with the whole evaluation: test_eval.py."""

from __future__ import annotations

import pandas as pd
import pytest

from p2med.platform.data.shards import image_shapes
from p2med.platform.errors import P2MedError
from p2med.platform.eval.benchmark import build_benchmark
from p2med.platform.eval.evaluate import evaluate
from p2med.platform.eval.inference import Predictor, _row
from p2med.platform.eval.settings import BenchmarkSettings, EvalSettings, InferenceSettings
from p2med.platform.storage import StorageSettings, resolve


@pytest.fixture(scope="module")
def predictor(small_ingest, small_model_dir) -> Predictor:
    config = InferenceSettings(batch_size=4, max_new_tokens=4)
    return Predictor(str(small_model_dir), StorageSettings(), image_shapes(small_ingest.manifest), config)


@pytest.fixture(scope="module")
def samples(small_ingest):
    bench = build_benchmark(small_ingest.shards, small_ingest.manifest, BenchmarkSettings(samples=6), "dev")
    assert any(s.images for s in bench.samples) and any(not s.images for s in bench.samples)
    return bench.samples


def test_a_batch_gets_an_answer_per_sample(predictor, samples):
    batch = pd.DataFrame([_row("model", i, sample) for i, sample in enumerate(samples)])
    out = predictor(batch)
    assert list(out.columns) == ["run", "index", "answer", "failed"]
    assert out["index"].tolist() == list(range(len(samples))) and set(out["run"]) == {"model"}
    assert all(isinstance(text, str) for text in out["answer"]) and set(out["failed"]) == {""}


def test_a_sample_that_cannot_be_generated_gets_its_reason_and_the_rest_are_answered(predictor, samples):
    rows = [_row("model", i, sample) for i, sample in enumerate(samples)]
    broken = next(i for i, sample in enumerate(samples) if "xray" in sample.images)
    rows[broken]["xray"] = rows[broken]["xray"][:10]  # not an image of the manifest's shape

    out = predictor(pd.DataFrame(rows))

    failed = out["failed"].tolist()
    assert failed[broken].startswith("ValueError") and out["answer"][broken] == ""
    assert [reason for i, reason in enumerate(failed) if i != broken] == [""] * (len(rows) - 1)


def test_an_evaluation_without_a_model_is_refused_before_it_starts(small_ingest, tmp_path):
    out = resolve(str(tmp_path / "eval"))
    with pytest.raises(P2MedError, match="cannot evaluate: no model folder at"):
        evaluate(resolve(str(tmp_path / "no-model")), small_ingest.shards, out, EvalSettings())
    assert not out.exists()
