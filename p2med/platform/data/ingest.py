"""Ingest: a raw hospital export -> de-identified, training-ready Parquet shards.

    summary = ingest(resolve("data/raw"), resolve("s3://bucket/shards"), IngestSettings(...))

Two Ray Data passes over file paths (workers read the files themselves, so bytes never
travel through the object store): the first reads DICOM headers, the driver joins them
with reports and records into per-patient work items (`ingest_plan`), the second decodes
pixels (`imaging`), one block of patients per task, and each task writes its block as one
Parquet shard and returns the shard's checksum and counts, so the driver never reads shards
back. Inputs that cannot be used are quarantined with a reason; the run goes on.

What it writes is the contract of `shards` (layout, manifest, schema). A rerun writes a
new data folder, swaps the manifest, then removes the old folder.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from p2med.platform.data.deid import Pseudonymizer, resolve_key
from p2med.platform.data.imaging import DecodeFailure, ImagingSettings, ct_volume, read_dicom, xray_pixels
from p2med.platform.data.ingest_plan import SPLITS, plan
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.quarantine import Quarantined, Reason
from p2med.platform.data.raw_store import (
    RECORDS_FILE,
    REPORTS_FILE,
    DicomHeader,
    dicom_paths,
    read_header,
    read_jsonl,
)
from p2med.platform.data.shards import (
    DATA_PREFIX,
    KIND,
    LOCK,
    MANIFEST,
    SHARD_SCHEMA,
    TEXT_COLUMNS,
    encode_pixels,
    write_manifest,
)
from p2med.platform.data.tasks import TASKS, tasks_for
from p2med.platform.errors import P2MedError
from p2med.platform.ray_runtime import ensure_ray
from p2med.platform.storage import Location, StorageSettings, check_writable, resolve


@dataclass
class IngestSummary:
    """What an ingest wrote, for the console and tests."""

    shards: str
    patients: int
    samples: dict[str, dict[str, int]]  # task -> split -> count
    quarantined: dict[str, int]  # reason -> count
    files_read: int
    seconds: float
    shard_files: list[str] = field(default_factory=list)

    @property
    def files_per_second(self) -> float:
        return self.files_read / self.seconds if self.seconds else float("inf")


def read_headers(
    batch: dict[str, np.ndarray], raw_uri: str, storage: StorageSettings, max_bytes: int
) -> dict[str, list]:
    """Pass 1: each path -> its header, or why it cannot be used (JSON). Runs in Ray Data
    workers; also usable in one process. `max_bytes`: what a Deflated file may inflate to."""
    raw = resolve(raw_uri, storage)
    out = []
    for path in batch["path"]:
        result = read_header(raw, str(path), max_bytes)
        if isinstance(result, Quarantined):
            out.append(json.dumps({"quarantined": [result.input, result.reason.value, result.detail]}))
        else:
            fields = {**result.__dict__, "identifiers": sorted(result.identifiers)}
            out.append(json.dumps({"header": fields}))
    return {"result": out}


def decode_rows(
    items: list[dict], raw: Location, imaging: ImagingSettings
) -> tuple[pa.Table, list[list[str]]]:
    """Work items -> shard rows with decoded pixels, and [path, reason, detail] for every
    image set aside. The decode pass of the pipeline, also usable in one process."""
    rows, failures = [], []
    for item in items:
        row = {name: item.get(name) for name in SHARD_SCHEMA.names}
        if item["xray_path"]:
            try:
                ds = read_dicom(raw.join(item["xray_path"]).read_bytes(), imaging.max_image_bytes)
                row["xray"] = encode_pixels(xray_pixels(ds, imaging))
            except DecodeFailure as failure:
                failures.append([item["xray_path"], failure.reason.value, failure.detail])
                row["xray_report"] = None  # a report is only a sample together with its image
        if item["ct_paths"]:
            try:
                files = [raw.join(p).read_bytes() for p in item["ct_paths"]]
                slices = [read_dicom(data, imaging.max_image_bytes) for data in files]
                row["ct"] = encode_pixels(ct_volume(slices, imaging))
            except DecodeFailure as failure:
                failures.append([item["ct_folder"], failure.reason.value, failure.detail])
                row["ct_report"] = None
        if item["orphan"]:
            if row["xray"] is not None or row["ct"] is not None:  # sound pixels, no report
                path = item["xray_path"] or item["ct_folder"]
                failures.append([path, Reason.IMAGE_WITHOUT_REPORT.value, "no report for this study"])
        elif any(row[name] is not None for name in TEXT_COLUMNS):
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), failures


@dataclass
class ShardResult:
    """What one decode task wrote: its manifest entry (None if no row survived), its
    samples per task and split, and every image it set aside as [path, reason, detail]."""

    entry: dict | None
    samples: dict[str, dict[str, int]]
    failures: list[list[str]]


def write_shard(
    items: list[dict], raw: Location, data_dir: Location, imaging: ImagingSettings
) -> ShardResult:
    """Decode `items` into one Parquet shard in `data_dir`, named by its checksum. The
    checksum and counts come from the bytes written, so nobody reads shards back."""
    table, failures = decode_rows(items, raw, imaging)
    samples = {task: dict.fromkeys(SPLITS, 0) for task in TASKS}
    for row in table.select(["split", *TEXT_COLUMNS]).to_pylist():
        for task in tasks_for(row):
            samples[task][row["split"]] += 1
    if not table.num_rows:
        return ShardResult(None, samples, failures)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"part-{digest[:16]}.parquet"
    data_dir.join(name).write_bytes(data)
    return ShardResult({"path": name, "rows": table.num_rows, "sha256": digest}, samples, failures)


def _write_shard_batch(
    batch: pa.Table, raw: tuple, data_dir: tuple, imaging: ImagingSettings
) -> dict[str, list]:
    """Ray Data pass 2, in a worker: one block of work items -> one shard. `raw` and
    `data_dir` are (uri, StorageSettings) pairs: a Location holds an open filesystem."""
    result = write_shard(batch.to_pylist(), resolve(*raw), resolve(*data_dir), imaging)
    return {"result": [json.dumps(result.__dict__)]}


def ingest(raw: Location, shards: Location, config: IngestSettings) -> IngestSummary:
    """Ingest `raw` into `shards`, replacing an earlier ingest there.

    Raises:
        P2MedError: no key, nothing to ingest, a location that is unusable or foreign, or
            another ingest writing into `shards`.
    """
    started = time.perf_counter()
    pseudonyms = Pseudonymizer(resolve_key(config.deid))
    _check_shards_location(shards)
    with _locked(shards):
        return _ingest(raw, shards, config, pseudonyms, started)


@contextlib.contextmanager
def _locked(shards: Location) -> Iterator[None]:
    """Holds the shards location's lock file: an ingest replaces the data folders it finds,
    so two at once would delete each other's."""
    lock = shards.join(LOCK)
    stamp = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if not lock.create(json.dumps(stamp).encode()):
        raise P2MedError(
            f"another ingest is writing into {shards.uri} (it holds {lock.uri}); wait for it to end, "
            f"or delete that file if its run was killed"
        )
    try:
        yield
    finally:
        lock.remove()


def _ingest(
    raw: Location, shards: Location, config: IngestSettings, pseudonyms: Pseudonymizer, started: float
) -> IngestSummary:
    if not raw.exists():
        raise P2MedError(f"raw store {raw.uri} does not exist")
    paths = dicom_paths(raw)
    reports, bad_reports = read_jsonl(raw, REPORTS_FILE, config.text_encodings)
    records, bad_records = read_jsonl(raw, RECORDS_FILE, config.text_encodings)
    if not paths and not records:
        raise P2MedError(f"raw store {raw.uri} holds no DICOM files (*.dcm) and no {RECORDS_FILE}")
    ensure_ray()  # after the checks above: a bad input should not wait for Ray to start
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = max(1, min(len(paths), cpus * config.blocks_per_cpu))

    header_rows = (
        ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        .map_batches(
            read_headers,
            fn_kwargs={
                "raw_uri": raw.uri,
                "storage": raw.storage,
                "max_bytes": config.imaging.max_image_bytes,
            },
            batch_size=64,
        )
        .take_all()
        if paths
        else []
    )
    headers, quarantined = parse_header_rows(header_rows)
    quarantined += bad_reports + bad_records
    work = plan(headers, reports, records, pseudonyms, config.split)
    quarantined += work.quarantined

    data_dir = shards.join(f"{DATA_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    results = []
    if work.items:  # a store of broken inputs only still gets a manifest with its quarantine
        shard_count = max(
            -(-len(work.items) // rows_per_shard(config, work.items)), min(len(work.items), blocks)
        )
        results = [
            ShardResult(**json.loads(row["result"]))
            for row in ray.data.from_items(work.items, override_num_blocks=shard_count)
            .map_batches(
                _write_shard_batch,
                fn_kwargs={
                    "raw": (raw.uri, raw.storage),
                    "data_dir": (data_dir.uri, data_dir.storage),
                    "imaging": config.imaging,
                },
                batch_format="pyarrow",
                batch_size=None,  # one block, one shard
            )
            .take_all()
        ]
    shard_entries = sorted((r.entry for r in results if r.entry), key=lambda e: e["path"])
    samples = {
        task: {split: sum(r.samples[task][split] for r in results) for split in SPLITS} for task in TASKS
    }
    patients = sum(e["rows"] for e in shard_entries)
    quarantined += [
        Quarantined(path, Reason(reason), detail) for r in results for path, reason, detail in r.failures
    ]

    manifest = {
        "data": data_dir.name,
        "imaging": config.imaging.model_dump(),
        "split": config.split.model_dump(),
        "patients": patients,
        "samples": samples,
        "shards": shard_entries,
        "quarantined": [_public(q, pseudonyms) for q in quarantined],
        "dicom_files": len(paths),
    }
    write_manifest(shards, manifest)
    _remove_other_data_dirs(shards, keep=data_dir.name)
    return IngestSummary(
        shards=shards.uri,
        patients=patients,
        samples=samples,
        quarantined=dict(collections.Counter(q.reason.value for q in quarantined)),
        files_read=len(paths),
        seconds=time.perf_counter() - started,
        shard_files=[data_dir.join(e["path"]).uri for e in shard_entries],
    )


def parse_header_rows(rows: list[dict]) -> tuple[list[DicomHeader], list[Quarantined]]:
    headers, quarantined = [], []
    for row in rows:
        result = json.loads(row["result"])
        if "quarantined" in result:
            path, reason, detail = result["quarantined"]
            quarantined.append(Quarantined(path, Reason(reason), detail))
        else:
            fields = result["header"]
            headers.append(DicomHeader(**{**fields, "identifiers": frozenset(fields["identifiers"])}))
    headers.sort(key=lambda h: h.path)
    return headers, quarantined


def _public(entry: Quarantined, pseudonyms: Pseudonymizer) -> dict:
    """A quarantine entry for the manifest: file paths carry UIDs, so they are replaced by
    keyed pseudonyms (recompute them from the raw paths with the key to find the file);
    JSONL line references are kept."""
    is_line = entry.input.split(":")[0] in (REPORTS_FILE, RECORDS_FILE)
    name = entry.input if is_line else pseudonyms.pseudonym("input", entry.input)
    return {"input": name, "reason": entry.reason.value, "detail": entry.detail}


def rows_per_shard(config: IngestSettings, items: list[dict]) -> int:
    img = config.imaging
    ct_share = sum(bool(i["ct_paths"]) for i in items) / max(len(items), 1)
    row_bytes = 2 * img.xray_size**2 + ct_share * 2 * img.ct_slices * img.ct_size**2 + 8_000
    return max(1, int(config.shard_target_mb * 1e6 / row_bytes))


def _check_shards_location(shards: Location) -> None:
    """The shards location must be writable and empty or ours."""
    check_writable(shards)
    manifest = shards.join(MANIFEST)
    if manifest.exists():
        try:
            ours = json.loads(manifest.read_text()).get("kind") == KIND
        except ValueError:
            ours = False
        if not ours:
            raise P2MedError(f"shards location {shards.uri} holds a manifest.json that is not ours")
        return
    foreign = [p for p in shards.list_files() if not p.startswith(DATA_PREFIX) and p != LOCK]
    if foreign:
        raise P2MedError(
            f"shards location {shards.uri} is not empty and holds no P2Med shards; choose an empty location"
        )


def _remove_other_data_dirs(shards: Location, keep: str) -> None:
    """Old data folders, and those of interrupted runs, once the new manifest is in place."""
    stale = {p.split("/", 1)[0] for p in shards.list_files() if p.startswith(DATA_PREFIX)} - {keep}
    for name in sorted(stale):
        shards.join(name).remove()
