"""Three-stage training (Ray Train + DeepSpeed) on an ingest's shards.

p2med train --config train/tiny.yaml shards=data/shards output=runs/train
p2med train --config train/tiny.yaml stage=3 resume=true output=s3://bucket/runs/r1
ray job submit --address http://127.0.0.1:8265 --working-dir . -- p2med train --config train/tiny.yaml ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from p2med.platform.storage import StorageSettings
from p2med.platform.train.settings import TrainSettings

if TYPE_CHECKING:
    from p2med.platform.train.trainer import TrainSummary


class JobSettings(TrainSettings):
    stage: Literal[1, 2, 3, "all"] = "all"
    """Which stage to train (each starts from the previous stage's model), or all three."""
    shards: str = "data/shards"
    """The ingest to train on (its manifest.json): a local path, file:// or s3:// URI."""
    output: str = "runs/train"
    """Where the stages, checkpoints, tokenizer and MLflow runs go."""
    resume: bool = False
    """Continue: skip finished stages and go on from the latest checkpoint of the current one."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""


def run(config: JobSettings) -> TrainSummary:
    from p2med.platform.storage import resolve
    from p2med.platform.train.trainer import train

    stages = [1, 2, 3] if config.stage == "all" else [config.stage]
    shards, output = resolve(config.shards, config.storage), resolve(config.output, config.storage)
    settings = TrainSettings.model_validate(
        config.model_dump(exclude={"stage", "shards", "output", "resume", "storage"})
    )
    print(f"train: stages {', '.join(map(str, stages))} on {shards.uri} -> {output.uri}")
    summary = train(shards, output, settings, stages, config.resume)
    for result in summary.stages:
        timing = "already done" if result.skipped else f"{result.seconds:.0f} s"
        print(f"train: stage {result.stage}: {timing}; model at {result.model}")
    return summary
