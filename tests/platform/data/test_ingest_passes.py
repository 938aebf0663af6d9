"""The ingest's two passes in one process (the quick lane's `small_ingest`): the shard they
write is the one the manifest describes, its rows are whole patients with images in the
contract's shapes, and readers refuse shards they cannot read. The same on a local Ray,
with quarantines and de-identification: test_ingest.py."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from p2med.platform.data.ingest import rows_per_shard
from p2med.platform.data.ingest_plan import SPLITS
from p2med.platform.data.shards import (
    IMAGE_COLUMNS,
    MANIFEST,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    decode_pixels,
    image_shapes,
    read_manifest,
    split_rows,
    write_manifest,
)
from p2med.platform.data.tasks import TASKS, tasks_for
from p2med.platform.errors import P2MedError
from p2med.platform.storage import resolve
from tests.platform.conftest import INGEST, RAW


def test_the_shard_is_the_one_the_manifest_describes(small_ingest):
    manifest, shards = small_ingest.manifest, small_ingest.shards
    [entry] = manifest["shards"]
    data = shards.join(manifest["data"], entry["path"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["path"] == f"part-{entry['sha256'][:16]}.parquet"

    rows = {split: list(split_rows(shards, manifest, split, SHARD_SCHEMA.names)) for split in SPLITS}
    assert entry["rows"] == manifest["patients"] == sum(map(len, rows.values())) == RAW.patients
    assert all(rows.values())  # INGEST's fractions put patients in every split
    for task in TASKS:
        for split in SPLITS:
            feeding = sum(task in tasks_for(row) for row in rows[split])
            assert manifest["samples"][task][split] == feeding, (task, split)


def test_rows_are_pseudonymous_patients_with_images_of_the_contracts_shapes(small_ingest):
    manifest = small_ingest.manifest
    shapes = image_shapes(manifest)
    assert shapes == {"xray": (64, 64), "ct": (8, 32, 32)}  # INGEST's imaging, not the raw sizes
    rows = [
        row
        for split in SPLITS
        for row in split_rows(small_ingest.shards, manifest, split, SHARD_SCHEMA.names)
    ]
    assert len({row["patient"] for row in rows}) == len(rows)
    assert all(row["patient"].startswith("patient-") for row in rows)
    for row in rows:
        for kind in IMAGE_COLUMNS:
            assert (row[kind] is None) == (row[f"{kind}_report"] is None), (row["patient"], kind)
            if row[kind] is not None:
                pixels = decode_pixels(row[kind], shapes[kind])
                assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.std() > 0
                report = json.loads(row[f"{kind}_report"])
                assert report["findings"] and report["impression"]
    assert sum(row["ct"] is not None for row in rows) > 0 and all(row["xray"] is not None for row in rows)


def test_shards_hold_fewer_rows_when_rows_hold_ct_volumes():
    xrays, cts = [{"ct_paths": []}] * 4, [{"ct_paths": ["a"]}] * 4
    config = INGEST.model_copy(update={"shard_target_mb": 5.0})
    assert rows_per_shard(config, cts) < rows_per_shard(config, xrays)
    assert rows_per_shard(config.model_copy(update={"shard_target_mb": 10.0}), xrays) > rows_per_shard(
        config, xrays
    )
    assert rows_per_shard(config.model_copy(update={"shard_target_mb": 1e-6}), cts) == 1


def test_readers_refuse_shards_they_cannot_read(small_ingest, tmp_path):
    with pytest.raises(P2MedError, match=r"no manifest\.json .* run `p2med ingest`"):
        read_manifest(resolve(str(tmp_path)))
    body = {k: v for k, v in small_ingest.manifest.items() if k not in ("kind", "schema_version")}
    copy = resolve(str(tmp_path / "copy"))
    write_manifest(copy, body)
    assert read_manifest(copy) == small_ingest.manifest

    manifest_file = copy.join(MANIFEST)
    for change, message in [
        ({"kind": "something-else"}, "is not a P2Med shards manifest"),
        ({"schema_version": 99}, f"schema version 99; this version of p2med reads version {SCHEMA_VERSION}"),
        ({"shards": []}, "wrote no shards"),
    ]:
        manifest_file.write_text(json.dumps(small_ingest.manifest | change))
        with pytest.raises(P2MedError, match=message):
            read_manifest(copy)

    # a shard changed after the ingest (same size, one byte flipped): refused, named
    changed = tmp_path / "changed"
    shutil.copytree(small_ingest.shards.path, changed)
    [part] = (changed / small_ingest.manifest["data"]).glob("*.parquet")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(P2MedError, match=rf"shard .*{part.name} does not match the checksum in its manifest"):
        list(split_rows(resolve(str(changed)), small_ingest.manifest, "train", ["patient"]))
