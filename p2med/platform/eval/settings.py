"""The evaluation's settings, apart from its machinery so that loading a config stays cheap."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from p2med.platform.config import Settings
from p2med.platform.data.tasks import TASKS

MODEL, TEXT_ONLY, SHUFFLED, MAJORITY = "model", "text_only", "shuffled_images", "majority"
CONTROLS = (TEXT_ONLY, SHUFFLED, MAJORITY)  # what `p2med.platform.eval.controls` makes


class BenchmarkSettings(Settings):
    """Which samples make the benchmark."""

    samples: int = Field(642, ge=1)
    """How many samples in all (P2Med-MBench has 642), split evenly over `tasks`."""
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    """The tasks to evaluate."""
    seed: int = 0
    """Which patients a task takes when the split has more than it needs."""
    file: str | None = None
    """A benchmark file (JSONL, `benchmark_file`: task, prompt, images, reference) to score
    instead of a split of the shards; every usable line of it, whatever samples, tasks and
    seed say."""
    max_image_bytes: int = Field(512 * 2**20, ge=1)
    """The most a benchmark file's image may decode or unzip to."""

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or not tasks:
            known = ", ".join(TASKS)
            raise ValueError(f"tasks must be a non-empty subset of {known}; got {unknown or tasks}")
        return [t for t in TASKS if t in tasks]


class InferenceSettings(Settings):
    """How the benchmark is answered."""

    batch_size: int = Field(16, ge=1)
    """Samples generated together by one actor."""
    replicas: int = Field(1, ge=1)
    """Actors, each holding the model."""
    cpus_per_replica: float = Field(1.0, gt=0)
    """CPUs each actor holds (its torch threads follow)."""
    gpus_per_replica: float = Field(0.0, ge=0)
    """Above 0, every actor runs the model on a GPU (bf16 where supported)."""
    max_new_tokens: int = Field(320, ge=1)
    """Longest answer; the longest reference (an inpatient record) needs a few hundred tiny-BPE tokens."""


class EvalSettings(Settings):
    split: Literal["dev", "test"] = "dev"
    """The ingest's split the benchmark is drawn from: `dev`, the one settings are tuned on,
    or `test`, scored once a model is chosen."""
    benchmark: BenchmarkSettings = BenchmarkSettings()
    """Which samples (size, tasks, seed)."""
    inference: InferenceSettings = InferenceSettings()
    """How they are answered (batch size, actors, resources, answer length)."""
    controls: list[str] = Field(default_factory=lambda: list(CONTROLS))
    """Controls to run beside the model: text_only, shuffled_images, majority."""

    @field_validator("controls")
    @classmethod
    def _known_controls(cls, controls: list[str]) -> list[str]:
        unknown = sorted(set(controls) - set(CONTROLS))
        if unknown:
            raise ValueError(f"unknown controls {unknown}; controls are {', '.join(CONTROLS)}")
        return controls
