"""The per-worker training loop of one stage (Ray Train + DeepSpeed).

Everything comes from the `config` argument (a `StageWork`): the loop builds or loads the
model, marks what the stage trains (`model.stages`), wraps it with `deepspeed.initialize`
on Ray Train's process group (gloo on CPU, nccl on GPU), streams its shard of the stage
dataset, and every `checkpoint.every_steps` validates and has every rank save its
DeepSpeed shard into one Ray Train checkpoint. After a worker failure, or on resume, it
continues from the latest checkpoint. Rank 0 tracks progress and, at the end, writes the
stage's model in the model's own folder format for the next stage, eval and serving.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import deepspeed
import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from p2med.model.batch import ATTENTION_MASK, INPUT_IDS
from p2med.model.checkpoint import load_model, save_model
from p2med.model.config import ModelConfig
from p2med.model.presets import build_model
from p2med.model.stages import apply_stage
from p2med.platform.data.vocabulary import finding_phrases
from p2med.platform.storage import StorageSettings, resolve
from p2med.platform.train.deepspeed_config import deepspeed_config
from p2med.platform.train.native_ops import use_installed_ninja
from p2med.platform.train.settings import TrainSettings
from p2med.platform.train.step import stage_loss
from p2med.platform.train.tracking import History, Tracker, TrackingStore

STATE_TAG = "state"  # the DeepSpeed checkpoint tag inside every Ray Train checkpoint
NAN_MARKER = "nan.json"  # written by rank 0 into the stage folder when the loss diverges


@dataclass(frozen=True)
class StageWork:
    """One stage's work, as the driver hands it to every worker."""

    stage: int
    settings: TrainSettings
    stage_dir: str  # URI of the stage's folder: model/, loss.png, nan.json
    storage: StorageSettings
    tokenizer: Any  # the tokenizer object (pickled to the workers)
    model_config: ModelConfig | None  # stage 1: build this; later stages load init_model
    init_model: str | None  # URI of the previous stage's model folder
    output: str  # URI of the whole run


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: config = {"work": ObjectRef of the StageWork}."""
    work: StageWork = ray.get(config["work"])
    use_installed_ninja()
    # DeepSpeed's ZeRO-2 gathers with a call torch 2.13 deprecates: a console line every step
    warnings.filterwarnings(
        "ignore", r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning
    )
    context = ray.train.get_context()
    rank = context.get_world_rank()
    settings, stage_settings = work.settings, work.settings.stages.of(work.stage)
    torch.manual_seed(work.settings.seed)  # identical initial weights on every rank

    device = ray.train.torch.get_device()
    model = _initial_model(work, device)
    model.use_attention(settings.model.attention)
    model.same_calls_on_every_rank = settings.deepspeed.zero_stage == 3
    plan = apply_stage(model, work.stage)
    # a model without a finding head (alignment none) learns from the language-model loss alone
    alignment_weight = settings.optimizer.alignment_weight if model.has_finding_head else 0.0
    if settings.model.checkpoints_activations:
        model.enable_gradient_checkpointing()
    if rank == 0:
        print(f"train: {plan.describe()}", flush=True)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=stage_settings.lr,
        weight_decay=settings.optimizer.weight_decay,
    )
    total = stage_settings.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(stage_settings.warmup_steps, total)
    )
    ds_config = deepspeed_config(
        settings.deepspeed, stage_settings.batch_size, settings.optimizer.grad_clip, bf16
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config, dist_init_required=False
    )

    step, history, run_id = 0, History(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        client = _restored(engine, checkpoint)
        step, history, run_id = client["step"], History(**client["history"]), client["run_id"]
        if rank == 0:
            print(f"train: stage {work.stage} resumes at step {step} from its latest checkpoint", flush=True)
    tracker = None
    if rank == 0:
        params = {"stage": work.stage, "steps": total, "batch_size": stage_settings.batch_size}
        params |= {"lr": stage_settings.lr, "workers": context.get_world_size()}
        params |= {"zero_stage": settings.deepspeed.zero_stage, **plan_params(plan)}
        store = TrackingStore.of(settings.tracking.mlflow_uri, resolve(work.output, work.storage), work.stage)
        tracker = Tracker(work.stage, total, store, settings.tracking, params, run_id, history)

    shard = ray.train.get_dataset_shard("train")
    batches = endless_batches(shard, stage_settings.batch_size, settings, device)
    stage_dir = resolve(work.stage_dir, work.storage)
    val_batches = None  # read at the first validation, then kept
    while step < total:
        started = time.perf_counter()
        batch = next(batches)
        engine.train()
        vision_only = step < getattr(stage_settings, "vision_steps", 0)
        loss = stage_loss(
            engine,
            batch,
            work.stage,
            alignment_weight,
            vision_only,
            stage_settings.micro_batches,
        )
        engine.backward(loss)
        engine.step()
        step += 1
        loss = loss.detach()  # a number to report from here on
        if not _finite_everywhere(loss):
            if rank == 0:
                stage_dir.join(NAN_MARKER).write_text(json.dumps({"step": step, "loss": float(loss)}) + "\n")
            return
        if tracker is not None:
            seconds = time.perf_counter() - started
            world = context.get_world_size()
            tracker.step(
                step,
                float(loss),
                {
                    "lr": schedule.get_last_lr()[0],
                    "samples_per_s": world * len(batch[INPUT_IDS]) / seconds,
                    "tokens_per_s": world * float(batch[ATTENTION_MASK].sum()) / seconds,
                },
            )
        if step % settings.checkpoint.every_steps == 0 or step == total:
            if val_batches is None:
                val_batches = validation_batches(ray.train.get_dataset_shard("val"), work, device)
            val_loss = validate(engine, val_batches, work, alignment_weight)
            if tracker is not None:
                tracker.validation(step, val_loss)
            state = {
                "step": step,
                "history": asdict(history),
                "run_id": tracker.run_id if tracker else run_id,
            }
            _report_checkpoint(engine, state, {"step": step, "loss": float(loss), "val_loss": val_loss})

    _save_final_model(engine, work, rank)
    if tracker is not None:
        with tempfile.TemporaryDirectory() as tmp:
            curve = os.path.join(tmp, "loss.png")
            tracker.finish(curve)
            with open(curve, "rb") as png:
                stage_dir.join("loss.png").write_bytes(png.read())


def plan_params(plan: Any) -> dict[str, Any]:
    return {"trains": ",".join(plan.parts), "trainable_params": plan.trainable, "total_params": plan.total}


def validation_batches(data: Any, work: StageWork, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The whole validation split (a few batches: `checkpoint.val_batches`), in memory.
    Every rank reads all of it (every forward pass runs on all ranks, as ZeRO-3 needs).
    Read once per stage: starting its Ray Data pipeline costs seconds each time, more than
    the forward passes, and the ranks' reads queue for the data CPU (docs/performance.md)."""
    batch_size = work.settings.stages.of(work.stage).batch_size
    return list(data.iter_torch_batches(batch_size=batch_size, device=device))


@torch.no_grad()
def validate(
    engine: Any, batches: list[dict[str, torch.Tensor]], work: StageWork, alignment_weight: float
) -> float:
    """Mean loss over the validation batches; NaN when the split is empty."""
    engine.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss = stage_loss(engine, batch, work.stage, alignment_weight)
        total += float(loss) * len(batch[INPUT_IDS])
        count += len(batch[INPUT_IDS])
    engine.train()
    return total / count if count else float("nan")


def _initial_model(work: StageWork, device: torch.device) -> Any:
    """The stage's starting model on this rank's device: stage 1 builds it (pretrained bases
    read straight onto the device), later stages load the previous stage's."""
    if work.init_model is None:
        config = work.model_config
        remote = [p for p in (config.llm.pretrained, config.vision.pretrained) if p and "://" in p]
        fs = resolve(remote[0], work.storage).fs if remote else None  # one S3 setting for all bases
        return build_model(config, work.tokenizer, fs, device=device)
    model, _ = load_model(work.init_model, fs=resolve(work.init_model, work.storage).fs, device=device)
    # stage 2 is the slots' first stage (a resumed run then loads its own weights)
    if work.stage == 2 and model.config.alignment == "slots":
        model.ground_verdict_slots(finding_phrases(model.config.language), work.tokenizer)
    return model.train()


def endless_batches(
    shard: Any, batch_size: int, settings: TrainSettings, device: torch.device
) -> Iterator[dict]:
    """Batches without end from a dataset shard (or a whole Dataset): it is read again,
    reshuffled with a new seed, whenever it runs out. Only whole batches: every rank then
    takes the same number of steps (the shards are equal)."""
    epoch = 0
    while True:
        got = False
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            local_shuffle_buffer_size=settings.data.shuffle_buffer or None,
            local_shuffle_seed=settings.seed + epoch,
            device=device,
            drop_last=True,
        ):
            got = True
            yield batch
        if not got:
            raise RuntimeError(
                f"this worker's share of the training data holds fewer than {batch_size} samples"
            )
        epoch += 1


def _finite_everywhere(loss: torch.Tensor) -> bool:
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0


def _report_checkpoint(engine: Any, state: dict[str, Any], metrics: dict[str, float]) -> None:
    """Every rank writes its DeepSpeed shard (ZeRO keeps optimizer state, and under ZeRO-3
    the parameters, split across ranks), then reports the folder: Ray Train gathers all
    ranks' files into one checkpoint."""
    with tempfile.TemporaryDirectory(prefix="p2med-ckpt-") as folder:
        engine.save_checkpoint(folder, tag=STATE_TAG, client_state=state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _restored(engine: Any, checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """Loads this rank's DeepSpeed state from the checkpoint; returns the client state.
    A remote checkpoint is copied into a folder of this rank's own: `as_directory` shares one
    download folder per node, and a rank arriving after another's download has ended copies
    the files again, in place, while the first one reads them (torch.load: EOFError)."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return engine.load_checkpoint(checkpoint.path, tag=STATE_TAG)[1]
    with tempfile.TemporaryDirectory(prefix="p2med-restore-") as folder:
        return engine.load_checkpoint(checkpoint.to_directory(folder), tag=STATE_TAG)[1]


def _save_final_model(engine: Any, work: StageWork, rank: int) -> None:
    """Rank 0 writes the stage's model folder; under ZeRO-3 every rank first joins in
    gathering the partitioned parameters."""
    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
        if work.settings.deepspeed.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank == 0:
            target = resolve(work.stage_dir, work.storage).join("model")
            save_model(engine.module, work.tokenizer, target.uri, fs=target.fs)
            print(f"train: stage {work.stage} model saved to {target.uri}", flush=True)


def _warmup_cosine(warmup: int, total: int):
    """Linear warm-up to the peak, then cosine decay to 10% of it at the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor
