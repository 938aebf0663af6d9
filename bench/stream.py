"""Stage-3 samples/s delivered as torch batches from shards on a local S3 server.

    .venv/bin/python bench/stream.py                   # the issue's figure (a few minutes)
    .venv/bin/python bench/stream.py --imaging small   # the images of ingest/small.yaml
    .venv/bin/python bench/stream.py --patients 60     # quicker look

The Ray side runs one task per shard file, so the ratio depends on how many files the
ingest writes: at 1,000 patients the default ingest writes several; at a few hundred
patients (two files) Ray's per-pass start-up outweighs the second core and the ratio falls
below 1 (docs/performance.md, stream).

Setup (timed and printed): a moto S3 server on 127.0.0.1, synthetic patients generated on
local disk and ingested into a bucket with the imaging settings of `ingest/<imaging>.yaml`,
and a tokenizer trained on the train split. Then, in the same run and on the same shard files:

- Ray Data: `stage_dataset(...).iter_torch_batches(...)`, the path a training worker uses;
- baseline: one process reads the same shard files with pyarrow from the same S3
  filesystem, with the very functions the Ray tasks run (`read_shard`, `encode_rows`),
  and slices the result into the same torch batches.

Each side runs one untimed pass first (worker start-up, imports), then `--repeats` timed
passes, alternating; the best pass of each counts. Every pass is a whole epoch of the
train split, so the Ray side pays its per-pass start-up (see "first batch after") each
time, as a training loop does each epoch. The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import ray
import torch

from p2med import configs
from p2med.model.tokenizer import train_bpe_tokenizer
from p2med.platform.config import read_config_file
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import ingest
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.shards import read_manifest, read_shard, shard_files
from p2med.platform.data.stage_datasets import (
    ROWS_PER_BATCH,
    StreamSpec,
    columns_for,
    corpus,
    encode_rows,
    stage_dataset,
    stream_spec,
)
from p2med.platform.data.stage_settings import StageDataSettings
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import Location, StorageSettings, resolve

# `python bench/stream.py` puts bench/ on the import path, not the repo root whose tests/
# holds the S3 test server (test support, not part of the p2med package)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.local_s3 import local_s3_server

STAGE, SPLIT = 3, "train"
KEY, SECRET, REGION = "bench", "bench-secret", "us-east-1"


@contextlib.contextmanager
def s3_server() -> Iterator[StorageSettings]:
    """A moto S3 server in its own process, as the tests run it."""
    with local_s3_server() as url:
        yield StorageSettings(endpoint_url=url, access_key_id=KEY, secret_access_key=SECRET, region=REGION)


def prepare(
    patients: int, imaging: ImagingSettings, storage: StorageSettings, root: str
) -> tuple[Location, StageDataSettings]:
    """Generate, ingest into a new bucket, train a tokenizer: the shards and the stream config."""
    bucket = f"p2med-bench-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=storage.endpoint_url,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    ).create_bucket(Bucket=bucket)
    raw = resolve(os.path.join(root, "raw"))
    synth = SynthSettings(patients=patients, ct_fraction=0.3, workers=len(os.sched_getaffinity(0)), seed=11)
    generate(synth, raw, progress=False)
    shards = resolve(f"s3://{bucket}/shards", storage)
    ingest(raw, shards, IngestSettings(imaging=imaging, deid=DeidSettings(key="bench-key")))
    tokenizer = os.path.join(root, "tokenizer")
    train_bpe_tokenizer(corpus(shards, SPLIT), vocab_size=4096).save_pretrained(tokenizer)
    return shards, StageDataSettings(tokenizer=tokenizer, max_length=256)


def ray_batches(
    shards: Location, config: StageDataSettings, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    yield from stage_dataset(shards, STAGE, SPLIT, config).iter_torch_batches(batch_size=batch_size)


def baseline_batches(
    shards: Location, spec: StreamSpec, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Shard by shard, the same reader and transform as the Ray tasks, cut into batches."""
    fs = shards.arrow_filesystem()
    rest: dict[str, np.ndarray] | None = None
    for shard in shard_files(shards, read_manifest(shards)):
        for rows in read_shard(shard, fs, columns_for(STAGE), ROWS_PER_BATCH):
            arrays, _ = encode_rows(rows, spec)
            if rest is not None:
                arrays = {key: np.concatenate([rest[key], value]) for key, value in arrays.items()}
            full = len(arrays["input_ids"]) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield {
                    key: torch.from_numpy(value[start : start + batch_size]) for key, value in arrays.items()
                }
            rest = {key: value[full:] for key, value in arrays.items()}
    if rest is not None and len(rest["input_ids"]):
        yield {key: torch.from_numpy(value) for key, value in rest.items()}


@dataclass(frozen=True)
class Pass:
    samples: int
    seconds: float
    first_batch_s: float  # how long the consumer waited for its first batch

    def __str__(self) -> str:
        return (
            f"{self.samples} samples in {self.seconds:.2f} s (first batch after {self.first_batch_s:.2f} s)"
        )


def timed(batches: Iterator[dict[str, torch.Tensor]]) -> Pass:
    """Exhaust an iterator of batches, timing it."""
    started = time.perf_counter()
    first, samples = None, 0
    for batch in batches:
        first = first or time.perf_counter() - started
        samples += len(batch["input_ids"])
    return Pass(samples, time.perf_counter() - started, first or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--imaging", choices=["default", "small"], default="default")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="p2med-bench-stream-") as root, s3_server() as storage:
        started = time.perf_counter()
        packaged = read_config_file(f"ingest/{args.imaging}.yaml", configs.FOLDER)
        imaging = ImagingSettings(**packaged["imaging"])
        shards, config = prepare(args.patients, imaging, storage, root)
        spec = stream_spec(read_manifest(shards), STAGE, SPLIT, config)
        print(
            f"setup: {args.patients} patients generated, ingested into local S3 (images of "
            f"ingest/{args.imaging}.yaml), tokenizer trained in {time.perf_counter() - started:.1f} s"
        )
        runs = {
            "ray": lambda: ray_batches(shards, config, args.batch_size),
            "baseline": lambda: baseline_batches(shards, spec, args.batch_size),
        }
        for batches in runs.values():
            timed(batches())  # warm-up: worker processes, imports, caches
        passes: dict[str, list[Pass]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternate, so drift on the machine hits both alike
            for name, batches in runs.items():
                passes[name].append(timed(batches()))
    for name, done in passes.items():
        print(f"{name}: " + "; ".join(map(str, done)))
    best = {name: min(done, key=lambda p: p.seconds) for name, done in passes.items()}
    if best["ray"].samples != best["baseline"].samples:
        raise SystemExit(f"the two paths delivered different sample counts: {best}")
    ray_rate, base_rate = (p.samples / p.seconds for p in (best["ray"], best["baseline"]))
    print(
        f"stream: ratio {ray_rate / base_rate:.2f} (Ray Data vs single-process pyarrow), "
        f"{ray_rate:.0f} vs {base_rate:.0f} samples/s from local S3"
    )


if __name__ == "__main__":
    main()
