"""Scores of generated text against the reference: text overlap (ROUGE-L, BLEU-4) for every
task, and clinical agreement (findings, diagnosis, treatment) where the task states them.

`score_sample` scores one prediction; `summarize` turns the scored samples of a run into
per-task and overall metrics and the diagnosis confusion matrix. All scores are on 0..1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from statistics import fmean
from typing import Any

from p2med.platform.data.extract import ClinicalExtractor
from p2med.platform.data.tasks import TASKS
from p2med.platform.data.vocabulary import DIAGNOSES
from p2med.platform.eval.overlap import corpus_bleu, rouge_l, sentence_bleu

# The clinical scores each task's target carries; ROUGE-L and BLEU-4 apply to every task.
TASK_SCORES: dict[str, frozenset[str]] = {
    "xray_report": frozenset({"findings"}),
    "ct_report": frozenset({"findings"}),
    "outpatient_record": frozenset({"findings", "diagnosis", "treatment"}),
    "inpatient_record": frozenset({"findings", "diagnosis", "treatment"}),
    "differential_diagnosis": frozenset({"findings", "diagnosis"}),
    "treatment_recommendation": frozenset({"treatment"}),
}
NO_DIAGNOSIS = "none"  # confusion-matrix column for a prediction that states no diagnosis


def score_sample(task: str, prediction: str, reference: str, extractor: ClinicalExtractor) -> dict[str, Any]:
    """JSON-ready scores of one prediction. A blank prediction (a failed sample) earns no
    clinical agreement, even where the reference states no findings."""
    if task not in TASK_SCORES:
        raise ValueError(f"task {task!r} does not exist; tasks are {', '.join(TASKS)}")
    blank = not prediction.strip()
    scores: dict[str, Any] = {
        "rouge_l": rouge_l(prediction, reference),
        "bleu4": sentence_bleu(prediction, reference),
    }
    if "findings" in TASK_SCORES[task]:
        tp, fp, fn = _counts(extractor.findings(prediction), extractor.findings(reference))
        f1 = 0.0 if blank else _f1(tp, fp, fn)
        scores |= {"findings_tp": tp, "findings_fp": fp, "findings_fn": fn, "findings_f1": f1}
    if "diagnosis" in TASK_SCORES[task]:
        expected_dx, predicted_dx = extractor.diagnosis(reference), extractor.diagnosis(prediction)
        scores |= {
            "diagnosis_reference": expected_dx,
            "diagnosis_predicted": predicted_dx,
            "diagnosis_correct": expected_dx is not None and predicted_dx == expected_dx,
        }
    if "treatment" in TASK_SCORES[task]:
        counts = _counts(extractor.treatments(prediction), extractor.treatments(reference))
        scores["treatment_agreement"] = 0.0 if blank else _f1(*counts)
    return scores


def summarize(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics per task (in `TASKS` order, tasks present only), overall, and the confusion
    matrix of diagnoses.

    Args:
        samples: records with `task`, `prediction`, `reference`, `scores` (of
            `score_sample`) and `failed` (None, or why the sample failed).

    Returns:
        `{"overall": metrics, "tasks": {task: metrics}, "confusion": {"labels", "matrix"}}`.
        A metric that does not apply, or that no sample has, is None. Overall, ROUGE-L and
        BLEU-4 are means over tasks; the clinical metrics pool all samples. The confusion
        matrix has one row per reference label of `DIAGNOSES` and one column per label of
        `labels`, which ends with "none" (no diagnosis predicted); rows exclude "none".
    """
    unknown = {sample["task"] for sample in samples} - set(TASKS)
    if unknown:
        raise ValueError(f"samples of unknown tasks {sorted(unknown)}; tasks are {', '.join(TASKS)}")
    by_task = {task: [s for s in samples if s["task"] == task] for task in TASKS}
    tasks = {task: _metrics(group) for task, group in by_task.items() if group}
    overall = _metrics(samples) | {
        "rouge_l": _mean(m["rouge_l"] for m in tasks.values()),
        "bleu4": _mean(m["bleu4"] for m in tasks.values()),
    }
    return {"overall": overall, "tasks": tasks, "confusion": _confusion(_diagnoses(samples))}


def _metrics(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    scores = [sample["scores"] for sample in samples]
    counts = [(s["findings_tp"], s["findings_fp"], s["findings_fn"]) for s in scores if "findings_tp" in s]
    diagnoses = _diagnoses(samples)
    return {
        "samples": len(samples),
        "failed": sum(sample["failed"] is not None for sample in samples),
        "rouge_l": _mean(s["rouge_l"] for s in scores),
        "bleu4": _corpus_bleu(samples),
        "findings_f1": _f1(*map(sum, zip(*counts, strict=True))) if counts else None,
        "diagnosis_accuracy": _mean(float(ref == pred) for ref, pred in diagnoses),
        "diagnosis_macro_f1": _macro_f1(diagnoses) if diagnoses else None,
        "treatment_agreement": _mean(s["treatment_agreement"] for s in scores if "treatment_agreement" in s),
    }


def _corpus_bleu(samples: list[Mapping[str, Any]]) -> float | None:
    if not samples:
        return None
    predictions = [sample["prediction"] for sample in samples]
    return corpus_bleu(predictions, [sample["reference"] for sample in samples])


def _diagnoses(samples: list[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """(reference, predicted) of the samples whose reference states a diagnosis."""
    return [
        (s["scores"]["diagnosis_reference"], s["scores"]["diagnosis_predicted"])
        for s in samples
        if s["scores"].get("diagnosis_reference") is not None
    ]


# Macro-F1 and the confusion matrix are a few lines each; scikit-learn would be a large
# dependency for them alone.
def _macro_f1(pairs: list[tuple[str, str | None]]) -> float:
    """Mean F1 over the labels that occur as reference or prediction; a missing prediction
    is a miss of the reference label and a false alarm of none."""
    labels = {label for pair in pairs for label in pair if label is not None}
    return fmean(
        _f1(
            sum(ref == pred == label for ref, pred in pairs),
            sum(pred == label != ref for ref, pred in pairs),
            sum(ref == label != pred for ref, pred in pairs),
        )
        for label in labels
    )


def _confusion(pairs: list[tuple[str, str | None]]) -> dict[str, Any]:
    columns = [*DIAGNOSES, NO_DIAGNOSIS]
    matrix = [[0] * len(columns) for _ in DIAGNOSES]
    for ref, pred in pairs:
        matrix[DIAGNOSES.index(ref)][columns.index(pred or NO_DIAGNOSIS)] += 1
    return {"labels": columns, "matrix": matrix}


def _counts(predicted: frozenset, expected: frozenset) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of a predicted set."""
    return len(predicted & expected), len(predicted - expected), len(expected - predicted)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 1.0 when there was nothing to find and nothing was claimed."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return fmean(present) if present else None
