"""Reading a raw hospital export: DICOM headers and JSONL reports and records.

The raw store is what a hospital drops into object storage: DICOM files anywhere below
it (`*.dcm`), `reports.jsonl` (one radiology report per study) and `records.jsonl`
(outpatient and inpatient records). Everything read here is identifying; it stays in
memory and only de-identified values leave the ingest.

A JSONL line is read in the first of `TEXT_ENCODINGS` that decodes it: exports from
Chinese hospital systems mix UTF-8 with GBK lines (GB18030 reads GBK and GB2312).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from p2med.platform.data.deid import header_identifiers
from p2med.platform.data.imaging import DecodeFailure, judged_alone, read_dicom
from p2med.platform.data.quarantine import Quarantined, Reason
from p2med.platform.storage import Location

REPORTS_FILE = "reports.jsonl"
RECORDS_FILE = "records.jsonl"
TEXT_ENCODINGS = ("utf-8", "gb18030")


@dataclass(frozen=True)
class DicomHeader:
    """What the ingest needs from one DICOM file, read without its pixel data."""

    path: str  # relative to the raw store
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    accession: str
    sex: str
    age_years: float | None
    identifiers: frozenset[str] = field(default_factory=frozenset)


def dicom_paths(raw: Location) -> list[str]:
    """Every DICOM file of the store, relative to it, in a stable order."""
    return [p for p in raw.list_files() if p.lower().endswith(".dcm")]


def read_header(raw: Location, path: str, max_bytes: int) -> DicomHeader | Quarantined:
    """The header of `path` (all of it, whatever its size: read up to the pixel data), or
    why it cannot be used. `max_bytes` bounds what a Deflated file may inflate to."""
    try:
        with raw.join(path).open("rb") as f:
            return _header(path, f, max_bytes)
    except DecodeFailure as failure:
        return Quarantined(path, failure.reason, failure.detail)


@judged_alone
def _header(path: str, f: BinaryIO, max_bytes: int) -> DicomHeader:
    ds = read_dicom(f, max_bytes, stop_before_pixels=True)
    if "SOPClassUID" not in ds and "Modality" not in ds:
        raise DecodeFailure(Reason.UNREADABLE_FILE, "no SOP class or modality: not an image")
    return DicomHeader(
        path=path,
        modality=str(ds.get("Modality", "")),
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        accession=str(ds.get("AccessionNumber", "")),
        sex=str(ds.get("PatientSex", "")),
        age_years=parse_dicom_age(str(ds.get("PatientAge", ""))),
        identifiers=frozenset(header_identifiers(ds)),
    )


def parse_dicom_age(value: str) -> float | None:
    """'004Y' -> 4.0, '006M' -> 0.5, '020D' -> 0.05; None if absent or malformed."""
    units = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
    if len(value) != 4 or not value[:3].isdigit() or value[3] not in units:
        return None
    return round(int(value[:3]) * units[value[3]], 2)


def read_jsonl(
    raw: Location, name: str, encodings: Sequence[str] = TEXT_ENCODINGS
) -> tuple[list[dict], list[Quarantined]]:
    """The rows of a JSONL file (absent: none), each line decoded by the first of
    `encodings` that reads it, and its malformed lines as quarantined inputs named
    `file:line`."""
    loc = raw.join(name)
    if not loc.exists():
        return [], []
    rows, bad = [], []
    for number, data in enumerate(loc.read_bytes().splitlines(), start=1):
        line = _decoded(data, encodings)
        if line is None:
            detail = f"a line that is not text in {' or '.join(encodings)}"
            bad.append(Quarantined(f"{name}:{number}", Reason.MALFORMED_JSONL, detail))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(
                Quarantined(f"{name}:{number}", Reason.MALFORMED_JSONL, f"invalid JSON at column {exc.colno}")
            )
            continue
        if not isinstance(row, dict):
            bad.append(Quarantined(f"{name}:{number}", Reason.MALFORMED_JSONL, "a line is not a JSON object"))
            continue
        rows.append(row)
    return rows, bad


def _decoded(data: bytes, encodings: Sequence[str]) -> str | None:
    """The line's text in the first encoding that reads it, a byte-order mark dropped."""
    for encoding in encodings:
        try:
            return data.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
    return None
