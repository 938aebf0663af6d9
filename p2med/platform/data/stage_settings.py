"""Settings of the stage datasets, apart from the pipeline so that loading a config stays
cheap (the CLI builds `--help` from them)."""

from __future__ import annotations

from pydantic import Field

from p2med.platform.config import Settings


class TaskWeights(Settings):
    """Stage-3 mixing: expected copies per epoch of each (patient, task) pair.

    1 keeps every pair once, 0.5 a deterministic half of them, 2.5 each pair twice plus a
    half of them a third time, 0 removes the task. Which pairs make the cut depends only
    on the seed, the patient and the task (`copies`).
    """

    xray_report: float = Field(1.0, ge=0)
    """X-ray -> report."""
    ct_report: float = Field(1.0, ge=0)
    """CT -> report."""
    outpatient_record: float = Field(1.0, ge=0)
    """Complaint, history, exam (+ images) -> imaging, diagnosis, plan."""
    inpatient_record: float = Field(1.0, ge=0)
    """Admission data + images -> imaging, hospital course, discharge diagnosis and plan."""
    differential_diagnosis: float = Field(1.0, ge=0)
    """Symptoms, exam, labs + images -> diagnosis with rationale."""
    treatment_recommendation: float = Field(1.0, ge=0)
    """Case summary with diagnosis -> treatment plan."""


class StageDataSettings(Settings):
    """How shards become the training samples of a stage."""

    tokenizer: str
    """Local folder of the tokenizer (`save_pretrained`); read on the driver and shipped to workers."""
    max_length: int = Field(256, ge=8)
    """Tokens per sample (L): targets are truncated to fit; samples whose prompt fills it are dropped."""
    task_weights: TaskWeights = TaskWeights()
    """Stage-3 task mixing; stages 1 and 2 ignore it."""
    seed: int = 0
    """Seed of the stage-3 mixing; vary it per epoch for a different cut of fractional weights."""
