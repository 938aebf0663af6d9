"""Prompt templates: a shard row (one patient) -> the training samples of each stage.

- Stage 1 (medical text): every record and report of the patient as plain text, prompt "".
- Stage 2 (image-text alignment): each decoded image -> its report (the report tasks' samples).
- Stage 3 (instruction tuning): one sample per task of `tasks.TASKS` the row can feed.

A prompt holds one `<image>` per image it shows, X-ray before CT; `Sample.images` names
them in that order. What only an image shows never enters a stage-3 prompt: a record's
`imaging` section and a report's findings and impression quote the lobe and side of a
finding, so they are targets only. Record tasks show every decoded image of the patient
and keep the record's `imaging` section in the target only when every modality it
quotes was shown, so a target never states what the model could not see. Report prompts
carry no clinical history: the symptoms imply the diagnosis and with it the finding type,
so a text-only model could write the findings that only the image should give away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.shards import IMAGE_COLUMNS
from p2med.platform.data.tasks import tasks_for

MODALITY_NAMES = {"xray": "Chest X-ray", "ct": "Chest CT"}
INSTRUCTIONS = {
    "xray_report": "Write the radiology report (findings and impression) for this chest X-ray.",
    "ct_report": "Write the radiology report (findings and impression) for this chest CT.",
    "outpatient_record": "Complete the outpatient record of this visit: imaging, diagnosis and plan.",
    "inpatient_record": (
        "Complete the inpatient record of this admission: imaging, hospital course, "
        "discharge diagnosis and discharge plan."
    ),
    "differential_diagnosis": "Give the most likely diagnosis with a short rationale.",
    "treatment_recommendation": "Recommend a treatment plan for this child.",
}
RECORD_SECTIONS = {  # the order a record is written in
    "outpatient": (
        "chief_complaint",
        "history",
        "examination",
        "investigations",
        "imaging",
        "diagnosis",
        "plan",
    ),
    "inpatient": (
        "reason_for_admission",
        "history",
        "examination",
        "investigations",
        "imaging",
        "hospital_course",
        "discharge_diagnosis",
        "discharge_plan",
    ),
}
RECORD_INPUTS = {  # what a clinician knows before imaging and diagnosis
    "outpatient": ("chief_complaint", "history", "examination", "investigations"),
    "inpatient": ("reason_for_admission", "history", "examination", "investigations"),
}


@dataclass(frozen=True)
class Sample:
    """One training example: the model reads `prompt` (with `images` in its `<image>` slots,
    in order) and learns to write `target`."""

    prompt: str
    target: str
    images: list[str]  # "xray" / "ct", one per `<image>` in `prompt`
    task: str  # a task of `tasks.TASKS`, or "text" for stage 1


def stage_samples(row: Mapping[str, Any], stage: int) -> list[Sample]:
    """The samples of training stage 1, 2 or 3 that one shard row yields."""
    if stage == 1:
        return [Sample("", text, [], "text") for text in row_texts(row)]
    if stage == 2:
        shown = [kind for kind in _shown(row) if row.get(kind + "_report") is not None]
        return [task_sample(row, kind + "_report") for kind in shown]
    if stage == 3:
        return [task_sample(row, task) for task in tasks_for(row)]
    raise ValueError(f"stage {stage!r} does not exist; training stages are 1, 2 and 3")


def row_texts(row: Mapping[str, Any]) -> list[str]:
    """Every report and record of a row as plain text, imaging included (stage 1, tokenizer corpus)."""
    texts = []
    for kind in IMAGE_COLUMNS:
        if report := _json(row, kind + "_report"):
            history = f"Clinical history: {report['clinical_history']}"
            texts.append(f"{MODALITY_NAMES[kind]} report\n{history}\n{_report_target(report)}")
    for kind, order in RECORD_SECTIONS.items():
        if record := _json(row, kind):
            extra = sorted(set(record) - set(order))  # sections a newer export may add
            texts.append(f"{kind.capitalize()} record\n" + _lines(record, (*order, *extra)))
    return texts


def task_sample(row: Mapping[str, Any], task: str) -> Sample:
    """The stage-3 sample of `task` for a row that can feed it (`tasks.tasks_for`)."""
    if task in ("xray_report", "ct_report"):
        prompt = f"{IMAGE_TOKEN}\n{INSTRUCTIONS[task]}"
        return Sample(prompt, _report_target(_json(row, task)), [task.removesuffix("_report")], task)
    if task in ("outpatient_record", "inpatient_record"):
        kind = task.removesuffix("_record")
        record, images = _json(row, kind), _shown(row)
        outputs = [s for s in RECORD_SECTIONS[kind] if s not in RECORD_INPUTS[kind]]
        if not _grounded(record.get("imaging", ""), images):
            outputs.remove("imaging")
        return Sample(
            _prompt(task, images, record, RECORD_INPUTS[kind]), _lines(record, outputs), images, task
        )
    if task == "differential_diagnosis":
        kind, record = _first_record(row)
        images = _shown(row)
        evidence = " ".join(
            f"{MODALITY_NAMES[k]}: {report['impression']}"
            for k in images
            if (report := _json(row, k + "_report"))
        )
        diagnosis = record["diagnosis" if kind == "outpatient" else "discharge_diagnosis"]
        target = (
            f"Diagnosis: {diagnosis}\nRationale: {evidence} "
            "The history, examination and investigations fit this diagnosis."
        )
        return Sample(_prompt(task, images, record, RECORD_INPUTS[kind]), target, images, task)
    if task == "treatment_recommendation":
        # The outpatient plan is the first decision (admission included); an inpatient-only
        # row has its course and discharge plan instead.
        kind, record = _first_record(row)
        if kind == "outpatient":
            inputs, outputs = (*RECORD_INPUTS[kind], "diagnosis"), ("plan",)
        else:
            inputs, outputs = (
                (*RECORD_INPUTS[kind], "discharge_diagnosis"),
                ("hospital_course", "discharge_plan"),
            )
        return Sample(_prompt(task, [], record, inputs), _lines(record, outputs), [], task)
    raise ValueError(f"task {task!r} does not exist; tasks are {', '.join(INSTRUCTIONS)}")


def request_prompt(task: str, images: list[str], clinical_text: str = "") -> str:
    """The prompt of `task` for a request that shows `images` ("xray" / "ct", X-ray first)
    with free clinical text, laid out as the task's training prompts are."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"task {task!r} does not exist; tasks are {', '.join(INSTRUCTIONS)}")
    text = clinical_text.strip()
    return f"{IMAGE_TOKEN}\n" * len(images) + INSTRUCTIONS[task] + (f"\n{text}" if text else "")


def image_report(row: Mapping[str, Any], kind: str) -> str | None:
    """The report text of a row's `kind` image ("xray" / "ct"), as the report tasks'
    targets write it; None when the row has no such report."""
    report = _json(row, kind + "_report")
    return _report_target(report) if report is not None else None


def _prompt(task: str, images: list[str], record: Mapping[str, str], sections: tuple[str, ...]) -> str:
    return f"{IMAGE_TOKEN}\n" * len(images) + f"{INSTRUCTIONS[task]}\n" + _lines(record, sections)


def _report_target(report: Mapping[str, str]) -> str:
    return f"Findings: {report['findings']}\nImpression: {report['impression']}"


def _lines(sections: Mapping[str, str], names: tuple[str, ...] | list[str]) -> str:
    return "\n".join(
        f"{name.replace('_', ' ').capitalize()}: {sections[name]}" for name in names if name in sections
    )


def _shown(row: Mapping[str, Any]) -> list[str]:
    return [kind for kind in IMAGE_COLUMNS if row.get(kind) is not None]


def _grounded(imaging_section: str, images: list[str]) -> bool:
    """Whether every modality an `imaging` section quotes is among the images shown."""
    quoted = [kind for kind in IMAGE_COLUMNS if f"{MODALITY_NAMES[kind]}:" in imaging_section]
    return bool(quoted) and set(quoted) <= set(images)


def _first_record(row: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    kind = "outpatient" if row.get("outpatient") is not None else "inpatient"
    return kind, _json(row, kind)


def _json(row: Mapping[str, Any], column: str) -> dict[str, str] | None:
    value = row.get(column)
    return json.loads(value) if value is not None else None
