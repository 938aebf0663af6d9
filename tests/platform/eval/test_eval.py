"""The evaluation on a real local Ray: benchmark build, controls, and `evaluate` end to end
with a tiny checkpoint on local disk and on the local S3 server, plus its bad inputs."""

from __future__ import annotations

import collections
import json
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from p2med.model.checkpoint import save_model
from p2med.model.presets import build_model
from p2med.model.tokenizer import train_bpe_tokenizer
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import ingest
from p2med.platform.data.ingest_plan import SplitSettings
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.prompts import INSTRUCTIONS
from p2med.platform.data.shards import read_manifest
from p2med.platform.data.stage_datasets import corpus
from p2med.platform.data.synth import SynthSettings
from p2med.platform.data.synth import generate as synthesize
from p2med.platform.data.tasks import TASKS
from p2med.platform.errors import P2MedError
from p2med.platform.eval.benchmark import build_benchmark
from p2med.platform.eval.controls import majority_answers, shuffled_images, text_only
from p2med.platform.eval.evaluate import evaluate
from p2med.platform.eval.settings import CONTROLS, BenchmarkSettings, EvalSettings, InferenceSettings
from p2med.platform.storage import resolve
from p2med.platform.train.settings import TrainSettings
from p2med.platform.train.trainer import model_config_for
from tests.support.shards import replace_shard

pytestmark = pytest.mark.slow  # the shards come from an ingest on a local Ray; inference runs on it

RAW = SynthSettings(patients=80, ct_fraction=0.5, xray_size=96, ct_slices=10, ct_size=40, workers=1)
IMAGING = ImagingSettings(xray_size=64, ct_slices=8, ct_size=32)
QUICK = EvalSettings(
    benchmark=BenchmarkSettings(samples=18),
    inference=InferenceSettings(batch_size=8, max_new_tokens=12),
)


def ingested(root: Path, dev_fraction: float = 0.3) -> Path:
    synthesize(RAW, resolve(str(root / "raw")), progress=False)
    config = IngestSettings(
        imaging=IMAGING, deid=DeidSettings(key="k"), split=SplitSettings(dev_fraction=dev_fraction)
    )
    ingest(resolve(str(root / "raw")), resolve(str(root / "shards")), config)
    return root / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return ingested(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="module")
def model_dir(shards, tmp_path_factory) -> Path:
    """An untrained tiny model sized to the shards (the harness, not the quality, is tested here)."""
    tokenizer = train_bpe_tokenizer(corpus(resolve(str(shards))), vocab_size=512)
    config = model_config_for(TrainSettings(), read_manifest(resolve(str(shards))))
    folder = tmp_path_factory.mktemp("eval-model") / "model"
    save_model(build_model(config, tokenizer), tokenizer, str(folder))
    return folder


def test_the_benchmark_is_deterministic_and_balanced(shards):
    at = resolve(str(shards))
    manifest = read_manifest(at)
    first = build_benchmark(at, manifest, BenchmarkSettings(samples=60), "dev")
    again = build_benchmark(at, manifest, BenchmarkSettings(samples=60), "dev")
    other_seed = build_benchmark(at, manifest, BenchmarkSettings(samples=60, seed=1), "dev")

    assert [s.id for s in first.samples] == [s.id for s in again.samples]
    assert [s.id for s in first.samples] != [s.id for s in other_seed.samples]
    everything = build_benchmark(at, manifest, BenchmarkSettings(samples=100_000), "dev")  # every candidate
    available = collections.Counter((s.task, s.diagnosis) for s in everything.samples)
    per_task = collections.Counter(s.task for s in first.samples)
    assert set(per_task) == set(TASKS)
    for task in TASKS:  # an equal share, or all the split has
        assert per_task[task] + first.shortfall.get(task, 0) == 10
        taken = collections.Counter(s.diagnosis for s in first.samples if s.task == task)
        most = max(taken.values())
        for diagnosis in {d for t, d in available if t == task}:  # even, unless a diagnosis ran out
            assert taken[diagnosis] >= most - 1 or taken[diagnosis] == available[task, diagnosis]
    assert len({s.id for s in first.samples}) == len(first.samples)  # a patient at most once per task
    for sample in first.samples:
        assert sample.prompt.count("<image>") == len(sample.images)
        assert (sample.xray is not None) == ("xray" in sample.images)


def test_controls_remove_or_swap_the_images_and_majority_needs_no_model(shards):
    at = resolve(str(shards))
    manifest = read_manifest(at)
    bench = build_benchmark(at, manifest, BenchmarkSettings(samples=60), "dev")
    shown = [s for s in bench.samples if s.images]

    blind = [text_only(s) for s in shown]
    assert all("<image>" not in s.prompt and not s.images and s.xray is None for s in blind)
    swapped = shuffled_images(bench.samples, seed=0)
    assert [s.prompt for s in swapped] == [s.prompt for s in bench.samples]
    groups = collections.Counter((s.task, s.images) for s in shown)
    for before, after in zip(bench.samples, swapped, strict=True):
        if before.images and groups[(before.task, before.images)] > 1:
            assert (after.xray, after.ct) != (before.xray, before.ct)  # another patient's images
            assert (after.xray is None) == (before.xray is None)

    answers = majority_answers(at, manifest, list(TASKS))
    assert set(answers) <= set(TASKS) and answers.get("xray_report", "").startswith("Findings:")


@pytest.mark.s3
@pytest.mark.parametrize("where", ["local", "s3"])
def test_evaluate_end_to_end(shards, model_dir, tmp_path, where, request):
    if where == "local":
        model, data, out = resolve(str(model_dir)), resolve(str(shards)), resolve(str(tmp_path / "eval"))
    else:
        bucket, storage = request.getfixturevalue("bucket"), request.getfixturevalue("s3_storage")
        fs = resolve(f"s3://{bucket}", storage).fs
        fs.put(str(shards) + "/", f"{bucket}/shards/", recursive=True)
        fs.put(str(model_dir) + "/", f"{bucket}/model/", recursive=True)
        model, data = resolve(f"s3://{bucket}/model", storage), resolve(f"s3://{bucket}/shards", storage)
        out = resolve(f"s3://{bucket}/eval", storage)

    metrics = evaluate(model, data, out, QUICK)

    assert list(metrics["controls"]) == ["model", *CONTROLS]
    assert metrics["benchmark"]["samples"] == 18
    on_disk = json.loads(out.join("metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    lines = [json.loads(line) for line in out.join("samples.jsonl").read_text().splitlines()]
    assert len(lines) == 18 * 4
    assert {line["control"] for line in lines} == {"model", *CONTROLS}
    assert all(line["failed"] is None for line in lines)
    majority = [line for line in lines if line["control"] == "majority" and line["task"] == "xray_report"]
    assert len({line["prediction"] for line in majority}) == 1  # one answer for every sample of a task
    html = out.join("report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "xray_report" in html
    model_scores = metrics["controls"]["model"]
    assert model_scores["overall"]["samples"] == 18
    assert 0 <= model_scores["overall"]["rouge_l"] <= 1


def test_a_sample_that_cannot_be_generated_is_recorded_and_the_run_goes_on(shards, model_dir, tmp_path):
    """One bench patient's history is far longer than the model's context."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    long_history = "Cough and fever since the trip. " * 2000
    for path in copy.rglob("*.parquet"):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if row["split"] == "dev" and row["outpatient"] is not None:
                record = json.loads(row["outpatient"])
                row["outpatient"] = json.dumps(record | {"history": long_history})
                break
        else:
            continue
        table = pq.read_table(path)
        replace_shard(copy, path, table.from_pylist(rows, schema=table.schema))
        break
    settings = QUICK.model_copy(
        update={"benchmark": BenchmarkSettings(samples=60, tasks=["outpatient_record"]), "controls": []}
    )

    metrics = evaluate(resolve(str(model_dir)), resolve(str(copy)), resolve(str(tmp_path / "eval")), settings)

    lines = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    failed = [line for line in lines if line["failed"]]
    assert len(failed) == 1 and "context" in failed[0]["failed"]
    assert failed[0]["prediction"] == "" and failed[0]["scores"]["rouge_l"] == 0
    assert all(line["prediction"] for line in lines if not line["failed"])
    assert metrics["controls"]["model"]["overall"]["failed"] == 1
    assert metrics["controls"]["model"]["overall"]["samples"] == len(lines) > 1


def test_bad_inputs_are_refused_with_a_clear_error(shards, model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir, broken)
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(P2MedError, match=r"incomplete: missing adapter/adapter_model\.safetensors"):
        evaluate(resolve(str(broken)), resolve(str(shards)), resolve(str(tmp_path / "e1")), QUICK)
    with pytest.raises(P2MedError, match="no model folder"):
        evaluate(resolve(str(tmp_path / "none")), resolve(str(shards)), resolve(str(tmp_path / "e2")), QUICK)

    no_dev = ingested(tmp_path / "no-dev", dev_fraction=0.0)
    with pytest.raises(P2MedError, match=r"dev split .* holds no patients"):
        evaluate(resolve(str(model_dir)), resolve(str(no_dev)), resolve(str(tmp_path / "e3")), QUICK)
    assert not (tmp_path / "e3").exists()  # nothing written for a run that could not start


def test_a_benchmark_file_is_scored_and_its_unusable_lines_are_left_out(shards, model_dir, tmp_path, capsys):
    dicom = shards.parent / "raw" / "dicom"
    folder = tmp_path / "mbench"
    (folder / "images").mkdir(parents=True)
    shutil.copy(next((dicom / "xray").glob("*.dcm")), folder / "images" / "cxr.dcm")
    series = next(p for p in (dicom / "ct").iterdir() if p.is_dir())
    with zipfile.ZipFile(folder / "images" / "ct.zip", "w") as archive:
        for path in sorted(series.glob("*.dcm")):
            archive.write(path, path.name)
    xray = {"task": "xray_report", "prompt": INSTRUCTIONS["xray_report"], "images": ["images/cxr.dcm"]}
    xray["reference"] = "Findings: No focal consolidation.\nImpression: No acute disease."
    absolute = str(folder / "images" / "ct.zip")
    ct = xray | {"task": "ct_report", "prompt": INSTRUCTIONS["ct_report"], "images": [absolute]}
    both = xray | {"task": "differential_diagnosis", "images": ["images/ct.zip", "images/cxr.dcm"]}
    lines = [
        xray | {"id": "case-1/xray_report"},
        ct,  # an absolute path
        both | {"diagnosis": "normal"},  # the CT listed first
        "{not json",
        xray | {"task": "radiology_haiku"},
        xray | {"images": ["images/Zhang-Wei.dcm"]},
        xray | {"images": ["images/cxr.dcm", "images/cxr.dcm"]},
    ]
    file = folder / "benchmark.jsonl"
    file.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    settings = QUICK.model_copy(
        update={"benchmark": BenchmarkSettings(file=str(file)), "controls": ["text_only", "majority"]}
    )

    out = resolve(str(tmp_path / "eval"))
    metrics = evaluate(resolve(str(model_dir)), resolve(str(shards)), out, settings)

    assert metrics["split"] is None and metrics["benchmark"]["file"] == str(file)
    assert metrics["benchmark"]["samples"] == 3 and metrics["benchmark"]["left_out"] == 4
    printed = capsys.readouterr().out
    for number, reason in (
        (4, "not a JSON object"),
        (5, "task: Value error, must be one of xray_report"),
        (6, "image 1: cannot be read (StorageError)"),
        (7, "more than one XRAY"),
    ):
        assert f"benchmark file line {number} left out: {reason}" in printed
    assert "Zhang" not in printed  # a path may name a patient: never quoted
    answers = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    model = {answer["id"]: answer for answer in answers if answer["control"] == "model"}
    assert set(model) == {"case-1/xray_report", "line-2", "line-3"}
    assert model["line-3"]["prompt"].startswith("<image>\n<image>\n")
    assert model["line-3"]["diagnosis"] == "normal"
    assert {answer["control"] for answer in answers} == {"model", "text_only", "majority"}
    assert f"from {file} (4 lines left out)" in (tmp_path / "eval" / "report.html").read_text()
