"""Ingest a raw store (DICOM, reports, records) into de-identified Parquet shards.

P2MED_DEID_KEY=... p2med ingest raw=data/raw shards=data/shards
p2med ingest --config ingest/default.yaml raw=s3://bucket/raw shards=s3://bucket/shards
"""

from __future__ import annotations

from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.storage import StorageSettings


class JobSettings(IngestSettings):
    raw: str = "data/raw"
    """The raw store to read: a local path, file:// or s3:// URI."""
    shards: str = "data/shards"
    """Where to write the shards and their manifest."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""


def run(config: JobSettings) -> None:
    from p2med.platform.data.ingest import ingest
    from p2med.platform.data.ingest_plan import SPLITS
    from p2med.platform.data.shards import MANIFEST
    from p2med.platform.storage import resolve

    raw, shards = resolve(config.raw, config.storage), resolve(config.shards, config.storage)
    print(f"ingest: {raw.uri} -> {shards.uri}")
    s = ingest(
        raw, shards, IngestSettings.model_validate(config.model_dump(exclude={"raw", "shards", "storage"}))
    )
    print(
        f"ingest: {s.patients} patients from {s.files_read} DICOM files in {s.seconds:.1f} s "
        f"({s.files_per_second:.0f} files/s), {len(s.shard_files)} shards"
    )
    print(f"ingest: {'samples':<26}" + "".join(f"{x:>8}" for x in SPLITS))
    for task, counts in s.samples.items():
        print(f"ingest:   {task:<24}" + "".join(f"{counts[x]:>8}" for x in SPLITS))
    quarantined = ", ".join(f"{r} {n}" for r, n in sorted(s.quarantined.items())) or "none"
    print(f"ingest: quarantined {sum(s.quarantined.values())}: {quarantined}")
    print(f"ingest: shards ready at {s.shards} (manifest: {shards.join(MANIFEST).uri})")
