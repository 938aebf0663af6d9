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

Prompts and targets are written in the language of the row's own text (`Wording`: English,
or Chinese for a Chinese hospital's reports and records), so that a model trained on
Chinese reads Chinese instructions and writes "诊断：" where an English one writes
"Diagnosis:".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.language import Language, text_language
from p2med.platform.data.shards import IMAGE_COLUMNS, TEXT_COLUMNS
from p2med.platform.data.tasks import tasks_for


@dataclass(frozen=True)
class Wording:
    """The words of prompts and targets in one language."""

    modality_names: dict[str, str]  # "xray" -> "Chest X-ray"
    instructions: dict[str, str]  # task -> instruction
    section_names: dict[str, str]  # record section key -> its label ({} : the key in words)
    record_titles: dict[str, str]  # "outpatient" -> "Outpatient record"
    report_title: str  # with {modality}
    clinical_history: str
    findings: str
    impression: str
    diagnosis: str
    rationale: str
    rationale_tail: str
    colon: str  # between a label and its text

    def label(self, section: str) -> str:
        return self.section_names.get(section) or section.replace("_", " ").capitalize()


ENGLISH = Wording(
    modality_names={"xray": "Chest X-ray", "ct": "Chest CT"},
    instructions={
        "xray_report": "Write the radiology report (findings and impression) for this chest X-ray.",
        "ct_report": "Write the radiology report (findings and impression) for this chest CT.",
        "outpatient_record": "Complete the outpatient record of this visit: imaging, diagnosis and plan.",
        "inpatient_record": (
            "Complete the inpatient record of this admission: imaging, hospital course, "
            "discharge diagnosis and discharge plan."
        ),
        "differential_diagnosis": "Give the most likely diagnosis with a short rationale.",
        "treatment_recommendation": "Recommend a treatment plan for this child.",
    },
    section_names={},
    record_titles={"outpatient": "Outpatient record", "inpatient": "Inpatient record"},
    report_title="{modality} report",
    clinical_history="Clinical history",
    findings="Findings",
    impression="Impression",
    diagnosis="Diagnosis",
    rationale="Rationale",
    rationale_tail="The history, examination and investigations fit this diagnosis.",
    colon=": ",
)
CHINESE = Wording(
    modality_names={"xray": "胸部X线", "ct": "胸部CT"},
    instructions={
        "xray_report": "请为这张胸部X线片书写影像报告（影像所见及印象）。",
        "ct_report": "请为这份胸部CT书写影像报告（影像所见及印象）。",
        "outpatient_record": "请补全本次门诊病历：影像学检查、诊断及处理。",
        "inpatient_record": "请补全本次住院病历：影像学检查、诊疗经过、出院诊断及出院医嘱。",
        "differential_diagnosis": "请给出最可能的诊断并简述依据。",
        "treatment_recommendation": "请为该患儿制定治疗方案。",
    },
    section_names={
        "chief_complaint": "主诉",
        "history": "现病史",
        "examination": "体格检查",
        "investigations": "辅助检查",
        "imaging": "影像学检查",
        "diagnosis": "诊断",
        "plan": "处理",
        "reason_for_admission": "入院原因",
        "hospital_course": "诊疗经过",
        "discharge_diagnosis": "出院诊断",
        "discharge_plan": "出院医嘱",
    },
    record_titles={"outpatient": "门诊病历", "inpatient": "住院病历"},
    report_title="{modality}报告",
    clinical_history="临床病史",
    findings="影像所见",
    impression="印象",
    diagnosis="诊断",
    rationale="依据",
    rationale_tail="病史、体格检查及辅助检查均支持该诊断。",
    colon="：",
)
WORDINGS: dict[Language, Wording] = {"en": ENGLISH, "zh": CHINESE}
MODALITY_NAMES = ENGLISH.modality_names
INSTRUCTIONS = ENGLISH.instructions
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


def row_wording(row: Mapping[str, Any]) -> Wording:
    """The wording of the language the row's reports and records are written in."""
    return WORDINGS[row_language(row)]


def row_language(row: Mapping[str, Any]) -> Language:
    """The language the row's reports and records are written in."""
    texts = [
        json.dumps(value, ensure_ascii=False) for column in TEXT_COLUMNS if (value := _json(row, column))
    ]
    return text_language(" ".join(texts))


def row_texts(row: Mapping[str, Any]) -> list[str]:
    """Every report and record of a row as plain text, imaging included (stage 1, tokenizer corpus)."""
    words, texts = row_wording(row), []
    for kind in IMAGE_COLUMNS:
        if report := _json(row, kind + "_report"):
            title = words.report_title.format(modality=words.modality_names[kind])
            history = f"{words.clinical_history}{words.colon}{report['clinical_history']}"
            texts.append(f"{title}\n{history}\n{_report_target(report, words)}")
    for kind, order in RECORD_SECTIONS.items():
        if record := _json(row, kind):
            extra = sorted(set(record) - set(order))  # sections a newer export may add
            texts.append(f"{words.record_titles[kind]}\n" + _lines(record, (*order, *extra), words))
    return texts


def task_sample(row: Mapping[str, Any], task: str) -> Sample:
    """The stage-3 sample of `task` for a row that can feed it (`tasks.tasks_for`)."""
    words = row_wording(row)
    if task in ("xray_report", "ct_report"):
        prompt = f"{IMAGE_TOKEN}\n{words.instructions[task]}"
        target = _report_target(_json(row, task), words)
        return Sample(prompt, target, [task.removesuffix("_report")], task)
    if task in ("outpatient_record", "inpatient_record"):
        kind = task.removesuffix("_record")
        record, images = _json(row, kind), _shown(row)
        outputs = [s for s in RECORD_SECTIONS[kind] if s not in RECORD_INPUTS[kind]]
        if not _grounded(record.get("imaging", ""), images, words):
            outputs.remove("imaging")
        prompt = _prompt(task, images, record, RECORD_INPUTS[kind], words)
        return Sample(prompt, _lines(record, outputs, words), images, task)
    if task == "differential_diagnosis":
        kind, record = _first_record(row)
        images = _shown(row)
        evidence = " ".join(
            f"{words.modality_names[k]}{words.colon}{report['impression']}"
            for k in images
            if (report := _json(row, k + "_report"))
        )
        diagnosis = record["diagnosis" if kind == "outpatient" else "discharge_diagnosis"]
        target = (
            f"{words.diagnosis}{words.colon}{diagnosis}\n"
            f"{words.rationale}{words.colon}{evidence} {words.rationale_tail}"
        )
        return Sample(_prompt(task, images, record, RECORD_INPUTS[kind], words), target, images, task)
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
        prompt = _prompt(task, [], record, inputs, words)
        return Sample(prompt, _lines(record, outputs, words), [], task)
    raise ValueError(f"task {task!r} does not exist; tasks are {', '.join(INSTRUCTIONS)}")


def request_prompt(task: str, images: list[str], clinical_text: str = "", language: Language = "en") -> str:
    """The prompt of `task` for a request that shows `images` ("xray" / "ct", X-ray first)
    with free clinical text, laid out as the task's training prompts are, in the clinical
    text's language (`language`, the model's, without one)."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"task {task!r} does not exist; tasks are {', '.join(INSTRUCTIONS)}")
    text = clinical_text.strip()
    instruction = WORDINGS[text_language(text) if text else language].instructions[task]
    return f"{IMAGE_TOKEN}\n" * len(images) + instruction + (f"\n{text}" if text else "")


def image_report(row: Mapping[str, Any], kind: str) -> str | None:
    """The report text of a row's `kind` image ("xray" / "ct"), as the report tasks'
    targets write it; None when the row has no such report."""
    report = _json(row, kind + "_report")
    return _report_target(report, row_wording(row)) if report is not None else None


def _prompt(
    task: str, images: list[str], record: Mapping[str, str], sections: tuple[str, ...], words: Wording
) -> str:
    instruction = words.instructions[task]
    return f"{IMAGE_TOKEN}\n" * len(images) + f"{instruction}\n" + _lines(record, sections, words)


def _report_target(report: Mapping[str, str], words: Wording) -> str:
    findings = f"{words.findings}{words.colon}{report['findings']}"
    return f"{findings}\n{words.impression}{words.colon}{report['impression']}"


def _lines(sections: Mapping[str, str], names: tuple[str, ...] | list[str], words: Wording) -> str:
    return "\n".join(
        f"{words.label(name)}{words.colon}{sections[name]}" for name in names if name in sections
    )


def _shown(row: Mapping[str, Any]) -> list[str]:
    return [kind for kind in IMAGE_COLUMNS if row.get(kind) is not None]


def _grounded(imaging_section: str, images: list[str], words: Wording) -> bool:
    """Whether every modality an `imaging` section quotes is among the images shown."""
    names = words.modality_names
    quoted = [
        kind for kind in IMAGE_COLUMNS if any(f"{names[kind]}{colon}" in imaging_section for colon in ":：")
    ]
    return bool(quoted) and set(quoted) <= set(images)


def _first_record(row: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    kind = "outpatient" if row.get("outpatient") is not None else "inpatient"
    return kind, _json(row, kind)


def _json(row: Mapping[str, Any], column: str) -> dict[str, str] | None:
    value = row.get(column)
    return json.loads(value) if value is not None else None
