"""Changing a local ingest's shards in tests, as an ingest would have written them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def replace_shard(shards: Path, part: Path, table: pa.Table) -> None:
    """Writes `table` over the shard file `part` of the ingest at `shards`, and the file's
    new checksum into the manifest (readers check every shard against it)."""
    pq.write_table(table, part)
    manifest = json.loads((shards / "manifest.json").read_text())
    [entry] = [e for e in manifest["shards"] if e["path"] == part.name]
    entry["sha256"] = hashlib.sha256(part.read_bytes()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))
