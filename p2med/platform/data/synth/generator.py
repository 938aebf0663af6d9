"""Write a synthetic P2Med-MD raw store: DICOM files, reports, records, manifest.

Layout under the output location (what a hospital export to object storage looks like):

    dicom/xray/<SOPInstanceUID>.dcm             one frontal chest X-ray per patient
    dicom/ct/<SeriesInstanceUID>/<SOPUID>.dcm   one file per CT slice, names not in slice order
    reports.jsonl                               one radiology report per study
    records.jsonl                               outpatient records, inpatient records if admitted
    manifest.json                               written last: what was generated

A data set is complete only once `manifest.json` exists; while writing, a marker file says
the location holds an unfinished data set, so a rerun may replace it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from p2med.platform.data.synth.cases import Case
from p2med.platform.data.synth.ct import render_ct
from p2med.platform.data.synth.dicom import ct_series, header_identity, xray_file
from p2med.platform.data.synth.faults import make_faults
from p2med.platform.data.synth.identity_zh import ChineseIdentity
from p2med.platform.data.synth.mixing import Mixer
from p2med.platform.data.synth.patients import dataset_key, patient_case, patient_identity_zh, patient_layout
from p2med.platform.data.synth.records import inpatient_record, outpatient_record
from p2med.platform.data.synth.records_zh import inpatient_record_zh, outpatient_record_zh
from p2med.platform.data.synth.reports import report_record
from p2med.platform.data.synth.reports_zh import report_record_zh
from p2med.platform.data.synth.settings import SynthSettings
from p2med.platform.data.synth.xray import render_xray
from p2med.platform.errors import P2MedError
from p2med.platform.storage import Location, StorageSettings, check_writable, resolve

MANIFEST = "manifest.json"
INCOMPLETE_MARKER = ".p2med-synth-incomplete"
KIND = "p2med-synthetic-raw"
SCHEMA_VERSION = 1
OUR_ENTRIES = ("dicom", "reports.jsonl", "records.jsonl")
# Small enough to keep both workers busy to the end and the progress bar moving, large
# enough that pickling results and task overhead stay negligible next to a patient's own
# generation time (docs/performance.md, synth).
PATIENTS_PER_TASK = 4


@dataclass
class PatientOutput:
    """What one patient contributed, gathered by the parent process."""

    index: int
    diagnosis: str
    admitted: bool
    reports: list[dict]
    records: list[dict]
    studies: list[dict]
    ct_slices: int


@dataclass
class SynthSummary:
    """What `generate` wrote, for the console and the manifest."""

    out: str
    patients: int
    xray_studies: int
    ct_series: int
    ct_slices: int
    reports: int
    outpatient_records: int
    inpatient_records: int
    diagnoses: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def patients_per_second(self) -> float:
        return self.patients / self.seconds if self.seconds else float("inf")


def render_patient(config: SynthSettings, index: int, out: Location) -> PatientOutput:
    """Make patient `index` and write its DICOM files under `out`."""
    case = patient_case(config, index)
    layout = patient_layout(config, case)
    rng = np.random.default_rng([config.seed, index, 1])
    rows = config.xray_size
    cols = round(rows * rng.uniform(0.82, 1.0))
    # Field of view grows with the child: ~22 cm for an infant, ~40 cm for a teenager.
    fov_mm = 220 + 13 * min(case.age_years, 14)
    key = dataset_key(config)
    chinese = patient_identity_zh(config, case) if config.language in ("zh", "mixed") else None
    who = header_identity(case, chinese)
    pixels = render_xray(layout, case.findings, (rows, cols), rng)
    xray = xray_file(case, key, pixels, fov_mm / rows, "DX" if rng.random() < 0.5 else "CR", who)
    xray_path = f"dicom/xray/{xray.sop_instance_uid}.dcm"
    out.join(xray_path).write_bytes(xray.data)
    studies = [{"modality": xray.modality, "path": xray_path, "files": 1, "bytes": len(xray.data)}]
    reports = [_report(config, case, chinese, xray.modality, xray.study_instance_uid)]
    ct_slices = 0
    if case.has_ct:
        ct_rng = np.random.default_rng([config.seed, index, 5])
        volume = render_ct(layout, case.findings, config.ct_slices, config.ct_size, ct_rng)
        chest_mm = 110 + 9 * min(case.age_years, 14)  # lung apex to base plus margins
        spacing = (0.75 * fov_mm / config.ct_size, chest_mm / config.ct_slices)
        series = ct_series(case, key, volume, *spacing, who)
        folder = f"dicom/ct/{series.series_instance_uid}"
        for sop_uid, data in series.files:
            out.join(f"{folder}/{sop_uid}.dcm").write_bytes(data)
        size = sum(len(d) for _, d in series.files)
        studies.append({"modality": "CT", "path": folder + "/", "files": len(series.files), "bytes": size})
        reports.append(_report(config, case, chinese, "CT", series.study_instance_uid))
        ct_slices = len(series.files)
    records = _records(case, chinese)
    if config.language == "mixed":
        mixer = Mixer(config.seed, index)
        reports, records = [mixer.record(row) for row in reports], [mixer.record(row) for row in records]
    return PatientOutput(index, case.diagnosis, case.admitted, reports, records, studies, ct_slices)


def _report(
    config: SynthSettings, case: Case, chinese: ChineseIdentity | None, modality: str, study: str
) -> dict:
    if chinese is None:
        return report_record(case, config.seed, modality, study)
    accession = case.identity.accession_ct if modality == "CT" else case.identity.accession_xray
    return report_record_zh(case, chinese, config.seed, modality, study, accession)


def _records(case: Case, chinese: ChineseIdentity | None) -> list[dict]:
    """The outpatient record, and the inpatient one of an admitted case."""
    if chinese is None:
        return [outpatient_record(case)] + ([inpatient_record(case)] if case.admitted else [])
    accessions = [case.identity.accession_xray] + ([case.identity.accession_ct] if case.has_ct else [])
    records = [outpatient_record_zh(case, chinese, accessions)]
    return records + ([inpatient_record_zh(case, chinese, accessions)] if case.admitted else [])


def _render_range(
    config: SynthSettings, out_uri: str, storage: StorageSettings, start: int, stop: int
) -> list[PatientOutput]:
    """Patients [start, stop), in a worker process: it resolves its own storage client."""
    out = resolve(out_uri, storage)
    return [render_patient(config, i, out) for i in range(start, stop)]


def generate(config: SynthSettings, out: Location, progress: bool = True) -> SynthSummary:
    """Generate the data set into `out`, replacing an earlier synthetic data set there.

    Raises:
        P2MedError: `out` is not writable, or holds something other than our data set.
    """
    started = time.perf_counter()
    _prepare_output(out)
    tasks = [
        (s, min(s + PATIENTS_PER_TASK, config.patients)) for s in range(0, config.patients, PATIENTS_PER_TASK)
    ]
    workers = min(config.workers or len(os.sched_getaffinity(0)), len(tasks))  # cores we may use
    results: list[PatientOutput] = []
    bar = tqdm(
        total=config.patients,
        unit="patient",
        desc="synth",
        file=sys.stderr,
        disable=not progress,
        mininterval=1,
    )
    with bar:
        if workers <= 1:
            for start, stop in tasks:
                results += _render_range(config, out.uri, out.storage, start, stop)
                bar.update(stop - start)
        else:
            # spawn: fork would copy s3fs's event loop and locks into the children.
            context = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_render_range, config, out.uri, out.storage, a, b) for a, b in tasks]
                try:
                    for future in cf.as_completed(futures):
                        batch = future.result()
                        results += batch
                        bar.update(len(batch))
                except BaseException:  # a failed patient or Ctrl-C: stop queued work now
                    pool.shutdown(cancel_futures=True)
                    raise
    results.sort(key=lambda r: r.index)
    summary = _write_tables_and_manifest(config, out, results)
    summary.seconds = time.perf_counter() - started
    return summary


def _prepare_output(out: Location) -> None:
    check_writable(out)
    marker, manifest = out.join(INCOMPLETE_MARKER), out.join(MANIFEST)
    ours = marker.exists() or (manifest.exists() and _is_our_manifest(manifest))
    if not ours and not out.is_empty():
        raise P2MedError(
            f"output {out.uri} is not empty and holds no P2Med synthetic data set; "
            "choose an empty or new location"
        )
    marker.write_bytes(b"")
    # The manifest goes first: from here on the old data set no longer looks complete.
    manifest.remove()
    for entry in OUR_ENTRIES:
        out.join(entry).remove()


def _is_our_manifest(loc: Location) -> bool:
    try:
        return json.loads(loc.read_text()).get("kind") == KIND
    except (ValueError, AttributeError):
        return False


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def _write_tables_and_manifest(
    config: SynthSettings, out: Location, results: list[PatientOutput]
) -> SynthSummary:
    reports = [r for p in results for r in p.reports]
    records = [r for p in results for r in p.records]
    studies = [s for p in results for s in p.studies]
    reports_bytes, records_bytes = _jsonl(reports), _jsonl(records)
    faults = make_faults(config, config.patients, len(reports), len(records)) if config.faults else None
    if faults:
        for path, data in faults.files.items():
            out.join(path).write_bytes(data)
        reports_bytes += "".join(line + "\n" for line in faults.report_lines).encode()
        records_bytes += "".join(line + "\n" for line in faults.record_lines).encode()
    out.join("reports.jsonl").write_bytes(reports_bytes)
    out.join("records.jsonl").write_bytes(records_bytes)
    kinds = collections.Counter(r["record_type"] for r in records)
    summary = SynthSummary(
        out=out.uri,
        patients=len(results),
        xray_studies=sum(s["modality"] != "CT" for s in studies),
        ct_series=sum(s["modality"] == "CT" for s in studies),
        ct_slices=sum(p.ct_slices for p in results),
        reports=len(reports),
        outpatient_records=kinds["outpatient"],
        inpatient_records=kinds["inpatient"],
        diagnoses=dict(sorted(collections.Counter(p.diagnosis for p in results).items())),
        bytes=sum(s["bytes"] for s in studies) + len(reports_bytes) + len(records_bytes),
    )
    counts = {k: v for k, v in asdict(summary).items() if k not in ("out", "seconds")}
    manifest = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "dataset_key": dataset_key(config),
        "config": config.model_dump(exclude={"workers"}),
        "counts": counts,
        "files": {"reports": "reports.jsonl", "records": "records.jsonl"},
        "studies": studies,
        "faults": faults.expected if faults else [],
    }
    out.join(MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    out.join(INCOMPLETE_MARKER).remove()
    return summary
