"""Synthetic data generator throughput: 1,000 patients, each with an X-ray and a CT.

    .venv/bin/python bench/synth.py                 # the issue's figure (a few minutes)
    .venv/bin/python bench/synth.py --patients 200  # quicker look

Baseline in the same run: one worker process on a slice of the patients, so the ratio
says what the worker pool buys. The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import resolve

TARGET_SECONDS = 120.0


def run(patients: int, workers: int, root: str) -> float:
    out = resolve(os.path.join(root, f"w{workers}-{patients}"))
    config = SynthSettings(patients=patients, ct_fraction=1.0, workers=workers, seed=7)
    summary = generate(config, out, progress=False)
    shutil.rmtree(out.path)
    return summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--baseline-patients", type=int, default=100)
    args = parser.parse_args()
    workers = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="p2med-bench-synth-") as root:
        base_s = run(args.baseline_patients, 1, root)
        full_s = run(args.patients, workers, root)
    base_rate = args.baseline_patients / base_s
    rate = args.patients / full_s
    print(
        f"baseline: 1 worker, {args.baseline_patients} patients, {base_s:.1f} s, {base_rate:.2f} patients/s"
    )
    print(f"measured: {workers} workers, {args.patients} patients, {full_s:.1f} s, {rate:.2f} patients/s")
    verdict = "meets" if full_s < TARGET_SECONDS * args.patients / 1000 else "MISSES"
    print(
        f"synth: ratio {rate / base_rate:.2f} ({workers} workers vs 1), {rate:.1f} patients/s, "
        f"{args.patients} patients with X-ray + CT in {full_s:.1f} s ({verdict} the < {TARGET_SECONDS:.0f} s "
        "per 1,000 target)"
    )


if __name__ == "__main__":
    main()
