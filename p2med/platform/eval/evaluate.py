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
from p2med.platform.data.shards import read_manifest
from p2med.platform.errors import P2MedError
from p2med.platform.eval.benchmark import Benchmark, BenchSample, build_benchmark
from p2med.platform.eval.controls import majority_answers, shuffled_images, text_only
from p2med.platform.eval.inference import answer
from p2med.platform.eval.report import html_report, summary_table
from p2med.platform.eval.scores import score_sample, summarize
from p2med.platform.eval.settings import MAJORITY, MODEL, SHUFFLED, TEXT_ONLY, EvalSettings
from p2med.platform.ray_runtime import ensure_ray
from p2med.platform.storage import Location


def evaluate(model: Location, shards: Location, out: Location, settings: EvalSettings) -> dict[str, Any]:
    """Score the model at `model` on the benchmark of the ingest at `shards`; write to `out`.

    Raises:
        P2MedError: a missing or incomplete model folder, missing shards, or an empty
            benchmark split.
    """
    try:
        config = check_model_folder(model.uri, model.fs)
    except FileNotFoundError as exc:
        raise P2MedError(f"cannot evaluate: {exc}") from None
    started = time.monotonic()
    manifest = read_manifest(shards)
    bench = build_benchmark(shards, manifest, settings.benchmark, settings.split)
    counts = bench.counts()
    print(
        f"eval: benchmark of {counts['samples']} samples of the {settings.split} split: "
        f"{_listing(counts['tasks'])}",
        flush=True,
    )
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
        "split": settings.split,
        "benchmark": counts,
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
    bench: Benchmark, model: Location, shards: Location, manifest: dict[str, Any], settings: EvalSettings
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
