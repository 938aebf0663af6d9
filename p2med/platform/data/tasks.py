"""The six clinical tasks (DESIGN.md) and which patient rows can feed each.

A shard row is one de-identified patient: images (X-ray, CT) and texts (reports,
outpatient and inpatient records), any of which may be missing. A task can use a row when
the row has what the task reads and what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2med.platform.data.shards import TEXT_COLUMNS

TASKS = (
    "xray_report",  # 2D chest X-ray -> report
    "ct_report",  # 3D chest CT -> report
    "outpatient_record",  # complaint, history, exam (+ X-ray) -> record with diagnosis, plan
    "inpatient_record",  # admission data + imaging -> record
    "differential_diagnosis",  # symptoms + imaging -> diagnosis with rationale
    "treatment_recommendation",  # case summary -> treatment plan
)
# The tasks a request with an image can ask for: the treatment plan reads a case summary only.
IMAGE_TASKS = tuple(task for task in TASKS if task != "treatment_recommendation")


def tasks_for(row: Mapping[str, Any]) -> list[str]:
    """The tasks a shard row can feed. A report column is only set when its image decoded,
    so a report stands for 'image and report'."""
    has = {name: row.get(name) is not None for name in TEXT_COLUMNS}
    record = has["outpatient"] or has["inpatient"]
    imaging = has["xray_report"] or has["ct_report"]
    available = {
        "xray_report": has["xray_report"],
        "ct_report": has["ct_report"],
        "outpatient_record": has["outpatient"],
        "inpatient_record": has["inpatient"],
        "differential_diagnosis": record and imaging,
        "treatment_recommendation": record,
    }
    return [task for task in TASKS if available[task]]
