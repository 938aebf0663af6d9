"""Training throughput: Ray Train + DeepSpeed with 1 worker vs a plain PyTorch loop in one
process, same model, data and batch size; and 2 workers vs 1 (no target on 2 cores).

    .venv/bin/python bench/train.py                # the longest bench (docs/performance.md)
    .venv/bin/python bench/train.py --steps 20 --rounds 1    # quicker look

Setup (untimed): 60 synthetic patients ingested with the small imaging settings, the tiny
model, stage 3 (the six tasks, X-rays and CTs mixed), batch 8 per worker.

- baseline: one process, one thread (as a Ray worker with one CPU gets), AdamW with the same
  clipping, over batches encoded beforehand by the same stage-dataset code, in the order the
  loop reads them (the same local shuffle and per-epoch seeds: a batch's cost depends on how
  many of its samples are 16-slice CTs, so a different order is a different workload);
- Ray: `p2med.platform.train.trainer.train` with 1 worker (1 CPU, the other core left to the
  data pipeline), then with 2 workers (0.5 CPU each), streaming from the shards.

Samples/s count steady-state steps only: the first `--warmup` steps are left out on both
sides (worker start, DeepSpeed set-up, first batches). The Ray side's step times come from
the per-step timestamps of its MLflow metrics. This VM's speed drifts markedly from one
minute to the next (docs/performance.md), so the plain loop and the 1-worker run alternate
for `--rounds` rounds and each keeps its best. The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch

from p2med.model.presets import build_model
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import load_tokenizer, train_bpe_tokenizer
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest import ingest
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.shards import read_manifest
from p2med.platform.data.stage_datasets import corpus, stage_dataset
from p2med.platform.data.stage_settings import StageDataSettings
from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import resolve
from p2med.platform.train.loop import endless_batches
from p2med.platform.train.settings import (
    AlignmentStageSettings,
    ScalingSettings,
    StageSettings,
    StagesSettings,
    TrackingSettings,
    TrainSettings,
)
from p2med.platform.train.step import stage_loss
from p2med.platform.train.trainer import model_config_for, train

BATCH = 8


def prepare(root: Path) -> tuple[Path, str]:
    generate(
        SynthSettings(patients=60, xray_size=192, ct_slices=20, ct_size=80, workers=1),
        resolve(str(root / "raw")),
    )
    imaging = ImagingSettings(xray_size=96, ct_slices=16, ct_size=64)
    ingest(
        resolve(str(root / "raw")),
        resolve(str(root / "shards")),
        IngestSettings(imaging=imaging, deid=DeidSettings(key="b")),
    )
    tokenizer = train_bpe_tokenizer(corpus(resolve(str(root / "shards"))), vocab_size=2048)
    tokenizer.save_pretrained(str(root / "tokenizer"))
    return root / "shards", str(root / "tokenizer")


def baseline(shards: Path, tokenizer_dir: str, steps: int, warmup: int, settings: TrainSettings) -> float:
    """Samples/s of a plain loop: the same model, loss, optimizer and batches."""
    torch.set_num_threads(1)
    data = stage_dataset(
        resolve(str(shards)), 3, "train", StageDataSettings(tokenizer=tokenizer_dir, max_length=256)
    )
    tokenizer = load_tokenizer(tokenizer_dir)
    config = model_config_for(settings, read_manifest(resolve(str(shards))))
    model = build_model(config, tokenizer).train()
    stream = endless_batches(data, BATCH, settings, torch.device("cpu"))
    batches = list(itertools.islice(stream, steps))
    apply_stage(model, 3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0)
    started = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            started = time.perf_counter()
        loss = stage_loss(model, batch, 3, settings.optimizer.alignment_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return (steps - warmup) * BATCH / (time.perf_counter() - started)


def ray_settings(tokenizer_dir: str, workers: int, steps: int) -> TrainSettings:
    return TrainSettings(
        stages=StagesSettings(stage3=StageSettings(steps=steps, batch_size=BATCH, lr=3e-4)),
        scaling=ScalingSettings(
            workers=workers, cpus_per_worker=1.0 if workers == 1 else 0.5, max_failures=0
        ),
        tracking=TrackingSettings(log_every_steps=1),
        checkpoint={"every_steps": steps, "val_batches": 1},
        model={"tokenizer": tokenizer_dir},
    )


def prepare_stage3(shards: Path, tokenizer_dir: str, out: Path) -> None:
    """Stage 3 starts from a stage-2 model: a 1-step stage 1 and 2 (untimed), once."""
    quick = {"steps": 1, "batch_size": BATCH}
    settings = ray_settings(tokenizer_dir, 1, 1)
    stages = StagesSettings(stage1=StageSettings(**quick), stage2=AlignmentStageSettings(**quick))
    prep = settings.model_copy(update={"stages": stages})
    train(resolve(str(shards)), resolve(str(out)), prep, [1, 2], resume=False)


def ray_side(
    shards: Path, tokenizer_dir: str, base: Path, out: Path, workers: int, steps: int, warmup: int
) -> float:
    """Samples/s of stage 3 of `train` with `workers` workers, from the step timestamps of
    its MLflow run; `base` holds stages 1 and 2."""
    shutil.copytree(base, out)
    settings = ray_settings(tokenizer_dir, workers, steps)
    train(resolve(str(shards)), resolve(str(out)), settings, [3], resume=False)
    stage3 = next(
        run
        for run in (out / "mlruns").glob("*/*")
        if (run / "params" / "stage").is_file() and (run / "params" / "stage").read_text() == "3"
    )
    lines = [line.split() for line in (stage3 / "metrics" / "loss").read_text().splitlines()]
    stamps = {int(step): int(ms) / 1000 for ms, _, step in lines}
    return (steps - warmup) * BATCH * workers / (stamps[steps] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of plain loop and 1 worker")
    args = parser.parse_args()
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    one = plain = 0.0
    with tempfile.TemporaryDirectory(prefix="p2med-bench-train-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        shards, tokenizer_dir = prepare(root)
        prepare_stage3(shards, tokenizer_dir, root / "base")
        seconds = time.perf_counter() - started
        print(f"setup: 60 patients ingested, tokenizer and stages 1-2 trained in {seconds:.0f} s")
        for round_ in range(1, args.rounds + 1):
            measured = baseline(shards, tokenizer_dir, args.steps, args.warmup, TrainSettings())
            print(f"round {round_}: plain PyTorch loop, one process: {measured:.1f} samples/s", flush=True)
            plain = max(plain, measured)
            out = root / f"ray1-{round_}"
            measured = ray_side(shards, tokenizer_dir, root / "base", out, 1, args.steps, args.warmup)
            print(f"round {round_}: Ray Train + DeepSpeed, 1 worker: {measured:.1f} samples/s", flush=True)
            one = max(one, measured)
        two = ray_side(shards, tokenizer_dir, root / "base", root / "ray2", 2, args.steps, args.warmup)
        print(f"Ray Train + DeepSpeed, 2 workers: {two:.1f} samples/s")
    print(
        f"train: ratio {one / plain:.2f} (Ray Train + DeepSpeed 1 worker vs plain loop, "
        f"best of {args.rounds}, target >= 0.85), {one:.1f} vs {plain:.1f} samples/s; "
        f"2 workers vs 1: {two / one:.2f} ({two:.1f} samples/s)"
    )


if __name__ == "__main__":
    main()
