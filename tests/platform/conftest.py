"""Shards for the quick lane: a small synthetic raw store ingested in this process, without
Ray, by the ingest's own passes (`read_headers`, `plan`, `write_shard`) and published with
`shards.write_manifest`. The slow tests ingest on a local Ray (`ingest.ingest`); these are
the same rows at small sizes, for the tests of what reads shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from p2med.model.checkpoint import save_model
from p2med.model.presets import build_model
from p2med.model.tokenizer import load_tokenizer, train_bpe_tokenizer
from p2med.platform.data.deid import DeidSettings, Pseudonymizer, resolve_key
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import parse_header_rows, read_headers, write_shard
from p2med.platform.data.ingest_plan import Plan, SplitSettings, plan
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.raw_store import RECORDS_FILE, REPORTS_FILE, dicom_paths, read_jsonl
from p2med.platform.data.shards import DATA_PREFIX, read_manifest, write_manifest
from p2med.platform.data.stage_datasets import corpus
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import Location, resolve
from p2med.platform.train.settings import TrainSettings
from p2med.platform.train.trainer import model_config_for

RAW = SynthSettings(patients=16, ct_fraction=0.5, xray_size=96, ct_slices=10, ct_size=40, workers=1, seed=5)
INGEST = IngestSettings(
    imaging=ImagingSettings(xray_size=64, ct_slices=8, ct_size=32),
    deid=DeidSettings(key="quick-lane-key"),
    split=SplitSettings(val_fraction=0.2, dev_fraction=0.3, test_fraction=0.1),  # every split holds patients
)


@dataclass
class InProcessIngest:
    raw: Path
    shards: Location
    manifest: dict[str, Any]
    work: Plan


def ingest_in_process(raw: Location, shards: Location, config: IngestSettings) -> InProcessIngest:
    """What `ingest.ingest` writes, its two passes run here: one shard, then the manifest."""
    paths = dicom_paths(raw)
    reports, _ = read_jsonl(raw, REPORTS_FILE)
    records, _ = read_jsonl(raw, RECORDS_FILE)
    batch = {"path": np.array(paths)}
    results = read_headers(batch, raw.uri, raw.storage, config.imaging.max_image_bytes)["result"]
    headers, quarantined = parse_header_rows([{"result": r} for r in results])
    work = plan(headers, reports, records, Pseudonymizer(resolve_key(config.deid)), config.split)
    data = f"{DATA_PREFIX}in-process"
    shard = write_shard(work.items, raw, shards.join(data), config.imaging)
    assert shard.entry is not None and not quarantined and not shard.failures
    write_manifest(
        shards,
        {
            "data": data,
            "imaging": config.imaging.model_dump(),
            "split": config.split.model_dump(),
            "patients": shard.entry["rows"],
            "samples": shard.samples,
            "shards": [shard.entry],
            "quarantined": [],
            "dicom_files": len(paths),
        },
    )
    return InProcessIngest(Path(raw.path), shards, read_manifest(shards), work)


@pytest.fixture(scope="session")
def small_ingest(tmp_path_factory) -> InProcessIngest:
    root = tmp_path_factory.mktemp("quick-lane")
    raw = resolve(str(root / "raw"))
    generate(RAW, raw, progress=False)
    return ingest_in_process(raw, resolve(str(root / "shards")), INGEST)


@pytest.fixture(scope="session")
def small_tokenizer_dir(small_ingest, tmp_path_factory) -> str:
    """A BPE tokenizer trained on the small ingest's train split, as tiny training does."""
    folder = tmp_path_factory.mktemp("quick-lane-tokenizer")
    train_bpe_tokenizer(corpus(small_ingest.shards), vocab_size=1024).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def small_model_dir(small_ingest, small_tokenizer_dir, tmp_path_factory) -> Path:
    """An untrained tiny model sized to the small ingest, as `p2med train` would save it
    (the harness around the model is what uses it, not its quality)."""
    tokenizer = load_tokenizer(small_tokenizer_dir)
    folder = tmp_path_factory.mktemp("quick-lane-model") / "model"
    torch.manual_seed(0)
    save_model(
        build_model(model_config_for(TrainSettings(), small_ingest.manifest), tokenizer),
        tokenizer,
        str(folder),
    )
    return folder
