"""The shard contract: what an ingest writes and every reader (training, eval) reads.

Layout under a shards location:

    data-<run id>/part-<sha256 prefix>.parquet   one row per patient (SHARD_SCHEMA)
    manifest.json                               written last; names the data folder
    ingest.lock                                 while an ingest writes here

The manifest holds `kind` and `schema_version`, the data folder (`data`), the `imaging`
settings the pixels were made with, the `split` settings, counts (`patients`, `samples`
per task and split, `dicom_files`), the `shards` as {path, rows, sha256} and the
`quarantined` inputs. Readers follow the manifest, so they never see a half-written data
set, and check every file against its checksum before using it. Images are float16 bytes
in [0, 1] of the sizes in `imaging` (`image_shapes`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from p2med.model.interleave import MODALITIES
from p2med.platform.errors import P2MedError
from p2med.platform.storage import Location

KIND = "p2med-shards"
SCHEMA_VERSION = 2  # 2: splits train / val / dev / test (1 had one benchmark split, bench)
MANIFEST = "manifest.json"
LOCK = "ingest.lock"
DATA_PREFIX = "data-"

_PATIENT_FIELDS = [
    pa.field("patient", pa.string(), nullable=False),  # keyed pseudonym
    pa.field("split", pa.string(), nullable=False),  # train / val / dev / test
    pa.field("sex", pa.string()),  # M / F / "" (unknown)
    pa.field("age_years", pa.float32()),
]
# One column per image kind, named as the model names it: float16 pixels, `image_shapes`.
_IMAGE_FIELDS = [pa.field(kind, pa.binary()) for kind in MODALITIES]
_TEXT_FIELDS = [
    pa.field("xray_report", pa.string()),  # JSON {clinical_history, findings, impression, modality}
    pa.field("ct_report", pa.string()),  # same shape as xray_report
    pa.field("outpatient", pa.string()),  # JSON {section name: text}
    pa.field("inpatient", pa.string()),  # JSON {section name: text}
]
SHARD_SCHEMA = pa.schema([*_PATIENT_FIELDS, *_IMAGE_FIELDS, *_TEXT_FIELDS])
PATIENT_COLUMNS = tuple(field.name for field in _PATIENT_FIELDS)
IMAGE_COLUMNS = tuple(field.name for field in _IMAGE_FIELDS)  # X-ray before CT: the prompts' order
TEXT_COLUMNS = tuple(field.name for field in _TEXT_FIELDS)  # a report is set only if its image decoded


def read_manifest(shards: Location) -> dict[str, Any]:
    """The manifest of an ingest at `shards`.

    Raises:
        P2MedError: no manifest there, a foreign one, another schema version, or no shards.
    """
    location = shards.join(MANIFEST)
    if not location.exists():
        raise P2MedError(f"no {MANIFEST} at {shards.uri}: run `p2med ingest` into it first")
    manifest = json.loads(location.read_text())
    if manifest.get("kind") != KIND:
        raise P2MedError(f"{location.uri} is not a P2Med shards manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise P2MedError(
            f"the shards at {shards.uri} have schema version {manifest.get('schema_version')!r}; this "
            f"version of p2med reads version {SCHEMA_VERSION}: ingest the raw store again"
        )
    if not manifest["shards"]:
        raise P2MedError(f"the ingest at {shards.uri} wrote no shards")
    return manifest


def write_manifest(shards: Location, manifest: dict[str, Any]) -> None:
    """Publish an ingest at `shards`: `manifest` with this contract's kind and schema version.
    Written last, so readers see the data folder it names only once it is complete."""
    body = {"kind": KIND, "schema_version": SCHEMA_VERSION, **manifest}
    shards.join(MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class ShardFile:
    """One shard file as the manifest lists it."""

    path: str  # as the shards location's `arrow_filesystem()` spells it
    sha256: str  # of the file's bytes


def shard_files(shards: Location, manifest: dict[str, Any]) -> list[ShardFile]:
    """The shard files the manifest lists."""
    return [
        ShardFile(shards.join(manifest["data"], entry["path"]).arrow_path(), entry["sha256"])
        for entry in manifest["shards"]
    ]


def checked_bytes(shard: ShardFile, filesystem: Any) -> pa.Buffer:
    """The bytes of a shard file, once they match the manifest's checksum.

    Raises:
        P2MedError: the file changed, or was cut short, after the ingest wrote it.
    """
    with filesystem.open_input_file(shard.path) as f:
        data = f.read_buffer()
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise P2MedError(
            f"shard {shard.path} does not match the checksum in its manifest: it changed after the "
            f"ingest wrote it; ingest the raw store again"
        )
    return data


def read_shard(shard: ShardFile, filesystem: Any, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
    """The `columns` of one (checked) shard file, `rows` rows (patients) at a time."""
    parquet = pq.ParquetFile(pa.BufferReader(checked_bytes(shard, filesystem)))
    for batch in parquet.iter_batches(batch_size=rows, columns=list(columns)):
        yield pa.Table.from_batches([batch])


def split_rows(
    shards: Location, manifest: dict[str, Any], split: str, columns: Sequence[str]
) -> Iterator[dict]:
    """The rows (dicts of `columns`) of the `split` patients, shard by shard, on the caller's
    process: no Ray needed."""
    fs = shards.arrow_filesystem()
    for shard in shard_files(shards, manifest):
        data = pa.BufferReader(checked_bytes(shard, fs))
        yield from pq.read_table(data, columns=list(columns), filters=[("split", "==", split)]).to_pylist()


def image_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The pixel shape of each image column: X-ray (S, S), CT (D, H, W)."""
    imaging = manifest["imaging"]
    return {
        "xray": (imaging["xray_size"],) * 2,
        "ct": (imaging["ct_slices"], imaging["ct_size"], imaging["ct_size"]),
    }


def encode_pixels(pixels: np.ndarray) -> bytes:
    """Pixels in [0, 1] -> a shard's image bytes (float16)."""
    return pixels.astype(np.float16).tobytes()


def decode_pixels(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A shard's image bytes (float16) -> float32 pixels of `shape`."""
    return np.frombuffer(raw, dtype=np.float16).reshape(shape).astype(np.float32)
