"""Ingest: raw store -> de-identified shards, on local disk and on the local S3 server.
Broken inputs are quarantined with their reasons; nothing identifying leaves."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest

from p2med.platform.data.deid import DeidSettings, Pseudonymizer
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import ingest
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.shards import SCHEMA_VERSION
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.errors import P2MedError
from p2med.platform.storage import resolve

pytestmark = pytest.mark.slow  # every test ingests on a local Ray

KEY = "test-deid-key"
RAW = SynthSettings(
    patients=20, ct_fraction=0.5, xray_size=128, ct_slices=12, ct_size=48, workers=1, faults=True
)
CONFIG = IngestSettings(
    imaging=ImagingSettings(xray_size=64, ct_slices=8, ct_size=32),
    deid=DeidSettings(key=KEY),
    shard_target_mb=0.2,
)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("ingest")
    generate(RAW, resolve(str(root / "raw")), progress=False)
    summary = ingest(resolve(str(root / "raw")), resolve(str(root / "shards")), CONFIG)
    return root / "raw", root / "shards", summary


def manifest_of(shards: Path) -> dict:
    return json.loads((shards / "manifest.json").read_text())


def shard_rows(shards: Path) -> list[dict]:
    manifest = manifest_of(shards)
    return [
        row
        for entry in manifest["shards"]
        for row in pq.read_table(shards / manifest["data"] / entry["path"]).to_pylist()
    ]


def test_rows_are_complete_patients(ingested):
    raw, shards, summary = ingested
    rows = shard_rows(shards)
    assert len(rows) == summary.patients == RAW.patients  # every good patient, no fault patient
    for row in rows:
        assert row["split"] in ("train", "val", "dev", "test") and row["patient"].startswith("patient-")
        assert len(row["xray"]) == 2 * 64 * 64  # float16 (S, S)
        assert row["ct"] is None or len(row["ct"]) == 2 * 8 * 32 * 32
        assert (row["ct"] is None) == (row["ct_report"] is None)
        assert set(json.loads(row["xray_report"])) == {
            "clinical_history",
            "findings",
            "impression",
            "modality",
        }
        assert "chief_complaint" in json.loads(row["outpatient"])
    faults = json.loads((raw / "manifest.json").read_text())["faults"]
    broken_series = sum(fault["inputs"][0].startswith("dicom/ct/") for fault in faults)
    series = sum(1 for _ in (raw / "dicom/ct").iterdir())
    assert sum(row["ct"] is not None for row in rows) == series - broken_series


def test_manifest_describes_the_shards(ingested):
    _, shards, summary = ingested
    manifest = manifest_of(shards)
    assert manifest["kind"] == "p2med-shards" and manifest["schema_version"] == SCHEMA_VERSION
    assert len(manifest["shards"]) > 1  # the small target size splits the data
    for entry in manifest["shards"]:
        data = (shards / manifest["data"] / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert pq.read_metadata(shards / manifest["data"] / entry["path"]).num_rows == entry["rows"]
    assert sum(e["rows"] for e in manifest["shards"]) == summary.patients
    assert sum(manifest["samples"]["xray_report"].values()) == summary.patients
    assert manifest["samples"] == summary.samples


def test_each_bad_input_is_quarantined_with_its_reason(ingested):
    raw, shards, _ = ingested
    faults = json.loads((raw / "manifest.json").read_text())["faults"]
    pseudonyms = Pseudonymizer(KEY.encode())
    quarantined = {(q["input"], q["reason"]) for q in manifest_of(shards)["quarantined"]}
    assert len(faults) == 17
    for fault in faults:
        first = fault["inputs"][0]
        if ".jsonl:" in first:
            name = first
        elif first.startswith("dicom/ct/"):
            name = pseudonyms.pseudonym("input", first.rsplit("/", 1)[0] + "/")
        else:
            name = pseudonyms.pseudonym("input", first)
        assert (name, fault["reason"]) in quarantined, fault["kind"]
    assert len(quarantined) == len(faults)


def identifying_values(raw: Path) -> set[str]:
    """Every identifying value of the raw store: DICOM headers, reports, records."""
    values: set[str] = set()
    for path in raw.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, struct.error):  # not DICOM; cut in its header
            continue
        for keyword in ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                        "SOPInstanceUID", "FrameOfReferenceUID", "PatientBirthDate", "InstitutionName",
                        "InstitutionAddress", "PatientAddress"):  # fmt: skip
            if ds.get(keyword):
                values.add(str(ds.get(keyword)))
        for keyword in ("PatientName", "ReferringPhysicianName", "ResponsiblePerson", "OperatorsName"):
            if ds.get(keyword):
                values |= {part for part in str(ds.get(keyword)).split("^") if part}
    for name in ("reports.jsonl", "records.jsonl"):
        for line in (raw / name).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key in ("patient_id", "accession_number", "study_instance_uid", "phone", "address",
                        "birth_date", "institution", "record_id", "report_id"):  # fmt: skip
                if row.get(key):
                    values.add(str(row[key]))
            for key in ("patient_name", "radiologist", "physician"):
                if row.get(key):
                    values |= set(str(row[key]).removeprefix("Dr. ").split())
    return values


def test_no_identifying_value_reaches_shards_or_manifest(ingested):
    raw, shards, _ = ingested
    values = identifying_values(raw)
    assert len(values) > 200
    manifest_text = (shards / "manifest.json").read_text()
    texts = [manifest_text]
    blobs = []
    for row in shard_rows(shards):
        for value in row.values():
            (blobs if isinstance(value, bytes) else texts).append(
                value if isinstance(value, bytes) else str(value)
            )
    text = "\n".join(texts)
    for value in values:
        assert not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text), "an identifying value leaked"
        if len(value) >= 8:  # long IDs would not turn up in float pixels by chance
            assert all(value.encode() not in blob for blob in blobs), "an identifying value leaked"
    assert "[REDACTED]" in text  # names were there, and were scrubbed


def test_split_is_deterministic_and_keyed(ingested, tmp_path):
    raw, shards, _ = ingested
    first = {r["patient"]: r["split"] for r in shard_rows(shards)}
    ingest(resolve(str(raw)), resolve(str(tmp_path / "again")), CONFIG)
    assert {r["patient"]: r["split"] for r in shard_rows(tmp_path / "again")} == first
    other_key = CONFIG.model_copy(update={"deid": DeidSettings(key="another-key")})
    ingest(resolve(str(raw)), resolve(str(tmp_path / "other")), other_key)
    assert not set(first) & {r["patient"] for r in shard_rows(tmp_path / "other")}


def test_rerun_replaces_and_leaves_no_mix(ingested, tmp_path):
    raw, _, _ = ingested
    out = resolve(str(tmp_path / "shards"))
    ingest(resolve(str(raw)), out, CONFIG)
    (tmp_path / "shards/data-interrupted-run").mkdir()  # what a killed run leaves
    (tmp_path / "shards/data-interrupted-run/part.parquet").write_bytes(b"half")
    ingest(resolve(str(raw)), out, CONFIG)
    folders = [p.name for p in (tmp_path / "shards").iterdir() if p.is_dir()]
    assert folders == [manifest_of(tmp_path / "shards")["data"]]
    assert not (tmp_path / "shards" / "ingest.lock").exists()  # released


def test_refuses_foreign_location_and_missing_key(ingested, tmp_path, monkeypatch):
    raw, _, _ = ingested
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(P2MedError, match="not empty and holds no P2Med shards"):
        ingest(resolve(str(raw)), resolve(str(tmp_path)), CONFIG)
    # a location another ingest is writing into (its lock there): refused, its data kept
    busy = tmp_path / "busy"
    (busy / "data-of-the-other-run").mkdir(parents=True)
    (busy / "ingest.lock").write_text("{}")
    held = r"another ingest is writing into .*busy \(it holds .*ingest\.lock\)"
    with pytest.raises(P2MedError, match=held):
        ingest(resolve(str(raw)), resolve(str(busy)), CONFIG)
    assert sorted(p.name for p in busy.iterdir()) == ["data-of-the-other-run", "ingest.lock"]
    monkeypatch.delenv("P2MED_DEID_KEY", raising=False)
    with pytest.raises(P2MedError, match="no de-identification key"):
        ingest(
            resolve(str(raw)),
            resolve(str(tmp_path / "s")),
            CONFIG.model_copy(update={"deid": DeidSettings()}),
        )


@pytest.mark.s3
def test_raw_and_shards_on_s3(bucket, s3_storage, ray_local):
    raw = resolve(f"s3://{bucket}/raw", s3_storage)
    shards = resolve(f"s3://{bucket}/shards", s3_storage)
    generate(RAW.model_copy(update={"patients": 6, "faults": False, "workers": 2}), raw, progress=False)
    summary = ingest(raw, shards, CONFIG)
    assert summary.patients == 6 and summary.quarantined == {}
    manifest = json.loads(shards.join("manifest.json").read_text())
    for entry in manifest["shards"]:
        shard = shards.join(manifest["data"], entry["path"])
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == entry["sha256"]


def test_a_store_of_broken_inputs_only(tmp_path, ray_local):
    raw = tmp_path / "raw"
    (raw / "dicom").mkdir(parents=True)
    (raw / "dicom/broken.dcm").write_bytes(b"<html>502 Bad Gateway</html>")
    (raw / "records.jsonl").write_text('{"patient_id": "MRN1", "record_type": "outpa\n')
    summary = ingest(resolve(str(raw)), resolve(str(tmp_path / "shards")), CONFIG)
    assert summary.patients == 0
    assert summary.quarantined == {"unreadable_file": 1, "malformed_jsonl": 1}
    assert manifest_of(tmp_path / "shards")["shards"] == []
