"""The evaluation: benchmark -> answers of the model and its controls -> scores -> report.

    metrics = evaluate(resolve("runs/r1/stage3/model"), resolve("data/shards"), resolve("runs/r1/eval"),
                       EvalSettings())

Writes under `out`:

    metrics.json    per control (model, text_only, shuffled_images, majority): overall and
                    per-task scores and the diagnosis confusion matrix; the benchmark's counts
    samples.jsonl   one line per sample and control: id, task, diagnosis, control, prompt,
                    reference, prediction, failed (the reason, or null) and its scores
    report.html     the same as a self-contained page with tables, charts and an example
                    answer of each task
"""

from __future__ import annotations

import json
import time
from typing import Any

from p2med.model.checkpoint import check_model_folder
from p2med.platform.data.extract import VocabularyExtractor
from p2med.platform.data.image_files import imaging_for
from p2med.platform.data.shards import read_manifest
from p2med.platform.errors import P2MedError
from p2med.platform.eval.benchmark import Benchmark, BenchSample, build_benchmark
from p2med.platform.eval.benchmark_file import read_benchmark_file
from p2med.platform.eval.controls import majority_answers, shuffled_images, text_only
from p2med.platform.eval.inference import answer
from p2med.platform.eval.report import html_report, summary_table
from p2med.platform.eval.scores import score_sample, summarize
from p2med.platform.eval.settings import MAJORITY, MODEL, SHUFFLED, TEXT_ONLY, EvalSettings
from p2med.platform.ray_runtime import ensure_ray
from p2med.platform.storage import Location, resolve


def evaluate(model: Location, shards: Location, out: Location, settings: EvalSettings) -> dict[str, Any]:
    """Score the model at `model` on the benchmark of the ingest at `shards` (or of the
    file `settings.benchmark.file`, URIs read with `out`'s storage settings); write to `out`.

    Raises:
        P2MedError: a missing or incomplete model folder, missing shards, an empty
            benchmark split, or a benchmark file without a usable line.
    """
    try:
        config = check_model_folder(model.uri, model.fs)
    except FileNotFoundError as exc:
        raise P2MedError(f"cannot evaluate: {exc}") from None
    started = time.monotonic()
    file = settings.benchmark.file
    if file is None:
        manifest = read_manifest(shards)
        bench, source = build_benchmark(shards, manifest, settings.benchmark, settings.split), None
    else:
        manifest = _majority_manifest(shards) if MAJORITY in settings.controls else None
        source = resolve(file, out.storage)
        bench, skipped = read_benchmark_file(source, imaging_for(config), settings.benchmark.max_image_bytes)
        for left_out in skipped:
            print(f"eval: benchmark file line {left_out.line} left out: {left_out.reason}", flush=True)
    counts = bench.counts()
    where = f"from {source.uri}" if source else f"of the {settings.split} split"
    print(f"eval: benchmark of {counts['samples']} samples {where}: {_listing(counts['tasks'])}", flush=True)
    if bench.shortfall:
        print(
            f"eval: the {settings.split} split is too small for an even share of every task; short by "
            f"{_listing(bench.shortfall)} (ingest more patients for the full benchmark)",
            flush=True,
        )
    answers = _answers(bench, model, shards, manifest, settings)
    extractor = VocabularyExtractor()
    records = [
        _record(sample, control, prediction, failed, extractor)
        for control, answered in answers.items()
        for sample, (prediction, failed) in zip(bench.samples, answered, strict=True)
    ]
    metrics = {
        "model": model.uri,
        "variant": {"preset": config.preset, "alignment": config.alignment},
        "split": settings.split if source is None else None,
        "benchmark": counts if source is None else counts | {"file": source.uri, "left_out": len(skipped)},
        "controls": {
            control: summarize([r for r in records if r["control"] == control]) for control in answers
        },
    }
    out.join("metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    out.join("samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out.join("report.html").write_text(html_report(metrics, records))
    print(summary_table(metrics), flush=True)
    print(f"eval: done in {time.monotonic() - started:.0f} s; report at {out.join('report.html').uri}")
    return metrics


def _answers(
    bench: Benchmark,
    model: Location,
    shards: Location,
    manifest: dict[str, Any] | None,
    settings: EvalSettings,
) -> dict[str, list[tuple[str, str | None]]]:
    """Per control, (answer, failure) for every benchmark sample. The image controls only
    send the samples that show images: on the others their input is the model's own, and
    greedy decoding would answer the same."""
    samples = bench.samples
    with_images = [i for i, s in enumerate(samples) if s.images]
    runs: dict[str, list[BenchSample]] = {MODEL: samples}
    if TEXT_ONLY in settings.controls:
        runs[TEXT_ONLY] = [text_only(samples[i]) for i in with_images]
    if SHUFFLED in settings.controls:
        shuffled = shuffled_images(samples, settings.benchmark.seed)
        runs[SHUFFLED] = [shuffled[i] for i in with_images]
    ensure_ray()
    answered = answer(runs, model.uri, model.storage, bench.shapes, settings.inference)
    out = {MODEL: answered[MODEL]}
    for control in (TEXT_ONLY, SHUFFLED):
        if control in runs:
            full = list(answered[MODEL])
            for i, result in zip(with_images, answered[control], strict=True):
                full[i] = result
            out[control] = full
    if MAJORITY in settings.controls:
        majority = majority_answers(shards, manifest, settings.benchmark.tasks)
        out[MAJORITY] = [(majority.get(s.task, ""), None) for s in samples]
    return out


def _majority_manifest(shards: Location) -> dict[str, Any]:
    """The manifest of the shards whose train split the majority control reads."""
    try:
        return read_manifest(shards)
    except P2MedError as exc:
        raise P2MedError(
            f"the majority control reads the train split of shards: {exc}; "
            "give shards=..., or leave it out: controls=[text_only,shuffled_images]"
        ) from None


def _record(
    sample: BenchSample, control: str, prediction: str, failed: str | None, extractor: Any
) -> dict[str, Any]:
    return {
        "id": sample.id,
        "task": sample.task,
        "diagnosis": sample.diagnosis,
        "control": control,
        "prompt": sample.prompt,
        "reference": sample.reference,
        "prediction": prediction,
        "failed": failed,
        "scores": score_sample(sample.task, prediction, sample.reference, extractor),
    }


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())
