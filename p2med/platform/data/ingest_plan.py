"""Joining a raw store into per-patient work items, de-identified before they leave.

Input: the DICOM headers and the JSONL reports and records of a raw store. Output: one
work item per patient for the decode pass — where its images are, its report and record
texts already scrubbed, a keyed pseudonym, and its split — plus the inputs that cannot
take part, each with its reason. Nothing identifying is in an item except the file paths
the decode pass must open, which never reach the shards.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import Field, model_validator

from p2med.platform.config import Settings
from p2med.platform.data.deid import Pseudonymizer, Scrubber, name_spellings, value_spellings
from p2med.platform.data.imaging import XRAY_MODALITIES
from p2med.platform.data.quarantine import Quarantined, Reason
from p2med.platform.data.raw_store import REPORTS_FILE, DicomHeader
from p2med.platform.data.shards import PATIENT_COLUMNS, TEXT_COLUMNS

SPLITS = ("train", "val", "dev", "test")
# A work item: the shard columns it already knows, and where its images are. Every item has
# every key, so that the decode pass's blocks share one schema.
ITEM_KEYS = ("orphan", *PATIENT_COLUMNS, "xray_path", "ct_paths", "ct_folder", *TEXT_COLUMNS)
REPORT_SECTIONS = ("clinical_history", "findings", "impression")


class SplitSettings(Settings):
    """Patient-level split: every sample of a patient lands in the same split. `dev` is the
    benchmark everything is tuned on; `test` is scored only when asked for (`p2med eval
    split=test`, the quickstart's final line), so that its scores were never chosen on."""

    val_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of patients held out for the validation loss during training."""
    dev_fraction: float = Field(0.15, ge=0, lt=1)
    """Share of patients held out for the benchmark that settings are tuned on."""
    test_fraction: float = Field(0.15, ge=0, lt=1)
    """Share of patients held out for the final, untuned benchmark."""

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSettings:
        if self.val_fraction + self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + dev_fraction + test_fraction must leave patients for training")
        return self

    def assign(self, fraction: float) -> str:
        """The split of a patient whose keyed hash maps to `fraction` in [0, 1)."""
        shares = (("test", self.test_fraction), ("dev", self.dev_fraction), ("val", self.val_fraction))
        for split, share in shares:
            if fraction < share:
                return split
            fraction -= share
        return "train"


@dataclass
class Plan:
    """Work items for the decode pass, and inputs already set aside.

    An image without a report is still decoded, as an item with `orphan` set: if its
    pixels are broken that is the reason to report; if not, it is quarantined as
    IMAGE_WITHOUT_REPORT. Orphans never become shard rows."""

    items: list[dict] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass
class _Patient:
    xray: DicomHeader | None = None
    ct: list[DicomHeader] = field(default_factory=list)
    reports: dict[str, dict] = field(default_factory=dict)  # "xray" / "ct" -> report row
    records: dict[str, dict] = field(default_factory=dict)  # "outpatient" / "inpatient" -> row
    identifiers: set[str] = field(default_factory=set)
    sex: str = ""
    age_years: float | None = None


def plan(
    headers: list[DicomHeader],
    reports: list[dict],
    records: list[dict],
    pseudonyms: Pseudonymizer,
    splits: SplitSettings,
) -> Plan:
    """Join images, reports and records by patient; see the module docstring."""
    result = Plan()
    patients: dict[str, _Patient] = defaultdict(_Patient)
    xrays, series = _image_units(headers, result)
    by_study = {}
    for number, report in enumerate(reports, start=1):
        keys = [report.get("study_instance_uid"), report.get("accession_number")]
        if not any(isinstance(k, str) and k for k in keys):
            result.quarantined.append(
                Quarantined(f"{REPORTS_FILE}:{number}", Reason.MALFORMED_JSONL, "report names no study")
            )
            continue
        for key in keys:
            if key:
                by_study[key] = (number, report)
    used_reports: set[int] = set()
    for header in xrays:
        _attach_image(patients, header, [header], "xray", by_study, used_reports, pseudonyms, result)
    for slices in series.values():
        _attach_image(patients, slices[0], slices, "ct", by_study, used_reports, pseudonyms, result)
    for number in sorted({n for n, _ in by_study.values()}):
        if number not in used_reports:
            result.quarantined.append(
                Quarantined(f"{REPORTS_FILE}:{number}", Reason.REPORT_WITHOUT_IMAGE, "its study has no image")
            )
    for record in records:
        patient_id = str(record.get("patient_id", ""))
        kind = record.get("record_type")
        if patient_id and kind in ("outpatient", "inpatient"):
            patient = patients[patient_id]
            patient.records[kind] = record
            patient.identifiers |= record_identifiers(record)
            patient.sex = patient.sex or str(record.get("sex", ""))
            if patient.age_years is None:
                patient.age_years = _age_from_record(record)
    for patient_id, patient in sorted(patients.items()):
        result.items.append(_item(patient_id, patient, pseudonyms, splits))
    return result


def _image_units(headers: list[DicomHeader], result: Plan):
    """X-ray files and CT series (grouped by SeriesInstanceUID); other modalities are
    quarantined."""
    xrays, series = [], defaultdict(list)
    for header in headers:
        if header.modality in XRAY_MODALITIES:
            xrays.append(header)
        elif header.modality == "CT":
            series[header.series_uid].append(header)
        else:
            detail = f"modality {header.modality or 'missing'} is neither a radiograph nor CT"
            result.quarantined.append(Quarantined(header.path, Reason.UNSUPPORTED_MODALITY, detail))
    return xrays, series


def _attach_image(patients, first, files, kind, by_study, used_reports, pseudonyms, result) -> None:
    found = by_study.get(first.study_uid) or by_study.get(first.accession)
    if found is None:
        result.items.append(_orphan(kind, files))
        return
    number, report = found
    patient = patients[first.patient_id]
    if kind in patient.reports:  # one study per modality per patient; later ones are not used
        return
    used_reports.add(number)
    patient.reports[kind] = report
    if kind == "xray":
        patient.xray = first
    else:
        patient.ct = files
    for header in files[:1]:  # the slices of a series share their identifying values
        patient.identifiers |= header.identifiers
    patient.identifiers |= report_identifiers(report)
    patient.sex = patient.sex or first.sex
    if patient.age_years is None:
        patient.age_years = first.age_years


def _orphan(kind: str, files: list[DicomHeader]) -> dict:
    paths = [h.path for h in files]
    return {
        **dict.fromkeys(ITEM_KEYS),
        "orphan": True,
        "xray_path": paths[0] if kind == "xray" else None,
        "ct_paths": paths if kind == "ct" else [],
        "ct_folder": _folder(paths[0]) if kind == "ct" else None,
    }


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/"


def report_identifiers(report: dict) -> set[str]:
    """The identifying values a report row carries, in the spellings text may use."""
    values = name_spellings(str(report.get("radiologist", "")))
    for key in ("patient_id", "accession_number", "study_instance_uid", "institution"):
        values |= value_spellings(str(report.get(key, "")))
    return values


def record_identifiers(record: dict) -> set[str]:
    """The identifying values a record row carries, in the spellings text may use."""
    values: set[str] = set()
    for key in ("patient_name", "physician", "guardian", "guardian_name", "next_of_kin"):
        values |= name_spellings(str(record.get(key, "")))
    for key in ("patient_id", "resident_id", "address", "phone", "institution", "birth_date", "record_id"):
        values |= value_spellings(str(record.get(key, "")))
    for accession in record.get("accession_numbers") or []:
        values |= value_spellings(str(accession))
    return values


def _age_from_record(record: dict) -> float | None:
    try:
        born = dt.date.fromisoformat(record["birth_date"])
        seen = dt.date.fromisoformat(record.get("visit_date") or record["admission_date"])
    except (KeyError, TypeError, ValueError):
        return None
    return round((seen - born).days / 365.25, 2)


def _item(patient_id: str, patient: _Patient, pseudonyms: Pseudonymizer, splits: SplitSettings) -> dict:
    scrub = Scrubber(patient.identifiers | value_spellings(patient_id))

    def report_text(kind: str) -> str | None:
        report = patient.reports.get(kind)
        if report is None:
            return None
        sections = {s: scrub(str(report.get(s, ""))) for s in REPORT_SECTIONS}
        return json.dumps({**sections, "modality": str(report.get("modality", ""))}, sort_keys=True)

    def record_text(kind: str) -> str | None:
        record = patient.records.get(kind)
        if record is None or not isinstance(record.get("sections"), dict):
            return None
        return json.dumps({k: scrub(str(v)) for k, v in record["sections"].items()}, sort_keys=True)

    return {
        "orphan": False,
        "patient": pseudonyms.pseudonym("patient", patient_id),
        "split": splits.assign(pseudonyms.unit_interval("split", patient_id)),
        "sex": patient.sex if patient.sex in ("M", "F") else "",
        "age_years": patient.age_years,
        "xray_path": patient.xray.path if patient.xray else None,
        "ct_paths": [h.path for h in patient.ct],
        "ct_folder": _folder(patient.ct[0].path) if patient.ct else None,
        "xray_report": report_text("xray"),
        "ct_report": report_text("ct"),
        "outpatient": record_text("outpatient"),
        "inpatient": record_text("inpatient"),
    }
