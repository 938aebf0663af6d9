"""Evaluate a trained model on the six-task benchmark: scores, controls and an HTML report.

p2med eval model=runs/train/stage3/model shards=data/shards out=runs/eval
p2med eval model=runs/train/stage3/model shards=data/shards out=runs/eval-test split=test
p2med eval model=runs/train/stage3/model benchmark.file=data/mbench.jsonl out=runs/eval-mbench
p2med eval --config eval/default.yaml model=s3://bucket/runs/r1/stage3/model shards=s3://bucket/shards out=s3://bucket/runs/r1/eval
"""

from __future__ import annotations

from typing import Any

from p2med.platform.eval.settings import EvalSettings
from p2med.platform.storage import StorageSettings


class JobSettings(EvalSettings):
    model: str = "runs/train/stage3/model"
    """The model folder to evaluate (a stage's `model/`): a local path, file:// or s3:// URI."""
    shards: str = "data/shards"
    """The ingest whose `split` (dev or test) makes the benchmark."""
    out: str = "runs/eval"
    """Where metrics.json, samples.jsonl and report.html go."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""


def run(config: JobSettings) -> dict[str, Any]:
    """Evaluate; the metrics that metrics.json holds."""
    from p2med.platform.eval.evaluate import evaluate
    from p2med.platform.storage import resolve

    model, shards = resolve(config.model, config.storage), resolve(config.shards, config.storage)
    out = resolve(config.out, config.storage)
    benchmark = config.benchmark.file or f"the {config.split} split of {shards.uri}"
    print(f"eval: {model.uri} on {benchmark} -> {out.uri}")
    settings = EvalSettings.model_validate(config.model_dump(exclude={"model", "shards", "out", "storage"}))
    return evaluate(model, shards, out, settings)
