"""Ingest throughput: the Ray Data pipeline vs one process doing the same work, and the
peak memory of the pipeline at two data-set sizes.

    .venv/bin/python bench/ingest.py                   # 1,000 patients (several minutes)
    .venv/bin/python bench/ingest.py --patients 200    # quicker look

Both sides read the same raw store (synthetic, with one broken input of each kind mixed in)
and run the same functions: header reads, the join and de-identification plan, DICOM
decode and transforms, Parquet shard writes with checksums. Both are warmed up first on a
small store (loading torch and MONAI is start-up cost, not throughput). This VM's CPU speed
drifts markedly between minutes (docs/performance.md), so the two sides run alternately and
the best run of each counts. Peak memory is the largest resident set of this process and
all its children (Ray's raylet and workers) together, sampled every 0.1 s. The last line
is the pasteable result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import psutil
import ray

from p2med.platform.data.deid import DeidSettings, Pseudonymizer, resolve_key
from p2med.platform.data.ingest import ingest, parse_header_rows, read_headers, rows_per_shard, write_shard
from p2med.platform.data.ingest_plan import plan
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.raw_store import RECORDS_FILE, REPORTS_FILE, dicom_paths, read_jsonl
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import Location, resolve

CONFIG = IngestSettings(deid=DeidSettings(key="bench-key"))


class PeakMemory:
    """Peak RSS of this process tree while the block runs, in GiB."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def single_process(raw: Location, out: str, config: IngestSettings) -> int:
    """The same steps as `ingest`, in a plain loop in this process. Returns rows written."""
    pseudonyms = Pseudonymizer(resolve_key(config.deid))
    paths = dicom_paths(raw)
    reports, _ = read_jsonl(raw, REPORTS_FILE)
    records, _ = read_jsonl(raw, RECORDS_FILE)
    batch = {"path": np.array(paths)}
    results = read_headers(batch, raw.uri, raw.storage, config.imaging.max_image_bytes)["result"]
    headers, _ = parse_header_rows([{"result": r} for r in results])
    work = plan(headers, reports, records, pseudonyms, config.split)
    data_dir, per_shard = resolve(out), rows_per_shard(config, work.items)
    rows = 0
    for start in range(0, len(work.items), per_shard):
        shard = write_shard(work.items[start : start + per_shard], raw, data_dir, config.imaging)
        rows += shard.entry["rows"] if shard.entry else 0
    return rows


def make_raw(root: str, patients: int) -> Location:
    raw = resolve(os.path.join(root, f"raw-{patients}"))
    started = time.perf_counter()
    generate(SynthSettings(patients=patients, faults=True, seed=11), raw, progress=False)
    print(f"setup: {patients} patients generated in {time.perf_counter() - started:.0f} s")
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--small", type=int, default=200, help="the smaller size for the memory comparison")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of each side; the best counts"
    )
    args = parser.parse_args()
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="p2med-bench-ingest-") as root:
        small, large = make_raw(root, args.small), make_raw(root, args.patients)
        warm = make_raw(root, 20)  # both sides load torch and MONAI before the clock starts
        ingest(warm, resolve(os.path.join(root, "warm")), CONFIG)
        single_process(warm, os.path.join(root, "warm-loop"), CONFIG)

        with PeakMemory() as memory:
            ingest(small, resolve(os.path.join(root, "shards-small")), CONFIG)
        small_gib = memory.gib
        baseline_runs, ray_runs, large_gib = [], [], 0.0
        for run in range(args.repeats):  # alternating, so a slow spell of the VM hits both sides
            started = time.perf_counter()
            baseline_rows = single_process(large, os.path.join(root, f"loop-{run}"), CONFIG)
            baseline_runs.append(time.perf_counter() - started)
            with PeakMemory() as memory:
                summary = ingest(large, resolve(os.path.join(root, f"shards-{run}")), CONFIG)
            ray_runs.append(summary.seconds)
            large_gib = max(large_gib, memory.gib)
            print(
                f"run {run + 1}: one process {baseline_runs[-1]:.1f} s, Ray Data {ray_runs[-1]:.1f} s",
                flush=True,
            )
        shutil.rmtree(root, ignore_errors=True)

    files, baseline_s, ray_s = summary.files_read, min(baseline_runs), min(ray_runs)
    print(f"baseline: one process, {baseline_rows} patients, {files} DICOM files, best {baseline_s:.1f} s")
    print(f"measured: Ray Data, {summary.patients} patients, {files} DICOM files, best {ray_s:.1f} s")
    quarantine = ", ".join(f"{k} {v}" for k, v in sorted(summary.quarantined.items()))
    print(f"quarantine ({args.patients} patients + faults): {quarantine}")
    print(
        f"ingest: ratio {baseline_s / ray_s:.2f} (Ray Data vs one process, best of {args.repeats}), "
        f"{files / ray_s:.0f} vs {files / baseline_s:.0f} DICOM files/s; "
        f"peak memory {small_gib:.2f} GiB at {args.small} patients, {large_gib:.2f} GiB at {args.patients}"
    )


if __name__ == "__main__":
    main()
