"""Three-stage training on Ray Train: the driver side.

    summary = train(resolve("data/shards"), resolve("s3://bucket/runs/r1"), TrainSettings(), stages=[1, 2, 3])

Per stage, under the output:

    stage<N>/model/       the stage's model (p2med.model.checkpoint format)
    stage<N>/loss.png     its loss curve
    stage<N>/ray/         Ray Train's run: every checkpoint (all ranks' DeepSpeed shards)
    tokenizer/            the tokenizer `tiny` trained on the shards (stage 1)
    mlruns/               MLflow file store (unless tracking.mlflow_uri says otherwise;
                          for an s3:// output, one archived store per stage:
                          mlruns/stage<N>.tar.gz, replaced at every checkpoint)

Stage N+1 starts from stage N's model. With `resume`, finished stages are skipped and the
unfinished one continues from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from p2med.model.checkpoint import check_model_folder
from p2med.model.config import ModelConfig
from p2med.model.files import copy_without_weights
from p2med.model.presets import PRESETS
from p2med.model.tokenizer import (
    CHINESE_TOKEN_BYTES,
    load_tokenizer,
    pretrained_tokenizer,
    train_bpe_tokenizer,
)
from p2med.platform.data.language import Language
from p2med.platform.data.shards import read_manifest
from p2med.platform.data.stage_datasets import corpus, split_language, stage_dataset
from p2med.platform.data.stage_settings import StageDataSettings
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.errors import P2MedError
from p2med.platform.ray_runtime import ensure_ray
from p2med.platform.storage import Location, check_writable
from p2med.platform.train.loop import NAN_MARKER, StageWork, train_loop
from p2med.platform.train.settings import ScalingSettings, TrainSettings

MODEL_DIR = "model"
DATA_CPUS = 1  # kept free of training workers for the stage datasets' tasks


@dataclass
class StageResult:
    stage: int
    seconds: float
    model: str
    skipped: bool = False


@dataclass
class TrainSummary:
    output: str
    stages: list[StageResult] = field(default_factory=list)


def train(
    shards: Location, output: Location, settings: TrainSettings, stages: list[int], resume: bool
) -> TrainSummary:
    """Train `stages` (a run of consecutive stages) on the ingest at `shards` into `output`.

    Raises:
        P2MedError: missing or incompatible shards, a missing previous stage, nothing to
            resume, a cluster that cannot place the workers, or a diverged loss.
    """
    manifest = read_manifest(shards)  # fails on a missing or incompatible ingest
    check_writable(output)
    if resume and not has_progress(output, stages):
        raise P2MedError(f"resume=true but {output.uri} holds no run of stage {stages[0]} to resume")
    _check_previous_stage(output, stages[0])
    ensure_ray()
    summary = TrainSummary(output.uri)
    with tempfile.TemporaryDirectory(prefix="p2med-train-") as scratch:
        tokenizer_dir = _tokenizer(shards, output, settings, stages[0], scratch)
        for stage in stages:
            stage_dir = output.join(f"stage{stage}")
            if resume and _finished(stage_dir.join(MODEL_DIR)):
                print(f"train: stage {stage} already finished ({stage_dir.join(MODEL_DIR).uri}); skipping")
                summary.stages.append(StageResult(stage, 0.0, stage_dir.join(MODEL_DIR).uri, skipped=True))
                continue
            summary.stages.append(
                _run_stage(stage, shards, output, manifest, settings, tokenizer_dir, resume, scratch)
            )
    return summary


def _run_stage(
    stage: int,
    shards: Location,
    output: Location,
    manifest: dict,
    settings: TrainSettings,
    tokenizer_dir: str,
    resume: bool,
    scratch: str,
) -> StageResult:
    started = time.perf_counter()
    stage_dir = output.join(f"stage{stage}")
    previous = output.join(f"stage{stage - 1}", MODEL_DIR) if stage > 1 else None
    _check_previous_stage(output, stage)
    # a fresh start: no checkpoint of an earlier attempt may be picked up; a resumed one
    # keeps its checkpoints, but an earlier divergence is news no more, and a model folder
    # there is one cut short (else the stage would have been skipped)
    for name in (NAN_MARKER, MODEL_DIR) if resume else (MODEL_DIR, "ray", NAN_MARKER, "loss.png"):
        if stage_dir.join(name).exists():
            stage_dir.join(name).remove()
    tokenizer = load_tokenizer(tokenizer_dir)
    data_config = StageDataSettings(
        tokenizer=tokenizer_dir,
        max_length=settings.data.max_length,
        task_weights=settings.data.task_weights,
        seed=settings.seed,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False  # our progress lines say more
    stage_settings = settings.stages.of(stage)
    val_rows = settings.checkpoint.val_batches * stage_settings.batch_size
    train_data = stage_dataset(shards, stage, "train", data_config)
    val_data = stage_dataset(shards, stage, "val", data_config).limit(val_rows)
    if settings.data.materialize:
        train_data = train_data.materialize()
        # every rank reads all of the validation rows: once here, not once per rank, whose
        # reads each cost a pipeline start (docs/performance.md)
        val_data = val_data.materialize()
        size = f"{train_data.count():,} samples, {train_data.size_bytes() / 2**20:,.0f} MiB"
        print(f"train: stage {stage} training data encoded and held in memory ({size})", flush=True)
    datasets = {"train": train_data, "val": val_data}
    work = StageWork(
        stage=stage,
        settings=settings,
        stage_dir=stage_dir.uri,
        storage=output.storage,
        tokenizer=tokenizer,
        model_config=model_config_for(settings, manifest, split_language(shards)) if stage == 1 else None,
        init_model=previous.uri if previous is not None else None,
        output=output.uri,
    )
    scaling = settings.scaling
    _wait_for_resources(scaling)
    trainer = TorchTrainer(
        train_loop,
        # by reference: Ray Train's controller unpickles the loop's config, and a StageWork
        # would import the training stack there (DeepSpeed, peft) before it asks for workers
        train_loop_config={"work": ray.put(work)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker}
            | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {}),
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name="ray",
            storage_path=stage_dir.arrow_path(),
            storage_filesystem=stage_dir.arrow_filesystem(),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.checkpoint.keep_best,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            # Ray Train's print patch echoes every worker line twice on the console
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    print(f"train: stage {stage} on {scaling.workers} worker(s) -> {stage_dir.uri}", flush=True)
    result = _fit_interruptibly(trainer)
    if stage_dir.join(NAN_MARKER).exists():
        where = json.loads(stage_dir.join(NAN_MARKER).read_text())
        kept = (
            f"the last good checkpoint (step {result.metrics['step']}) is "
            f"{stage_dir.join('ray', os.path.basename(result.checkpoint.path)).uri}; "
            f"rerun with resume=true to continue from it"
            if result.checkpoint is not None
            else "no checkpoint had been written yet"
        )
        raise P2MedError(
            f"stage {stage}: the loss became NaN or infinite at step {where['step']}; training stopped; "
            f"{kept}. Lower the learning rate or check the data"
        )
    seconds = time.perf_counter() - started
    print(f"train: stage {stage} done in {seconds:.0f} s", flush=True)
    return StageResult(stage, seconds, stage_dir.join(MODEL_DIR).uri)


def _fit_interruptibly(trainer: TorchTrainer) -> ray.train.Result:
    """`trainer.fit()` on a helper thread. On the main thread, Ray Train (2.60) installs
    a Ctrl-C handler of its own and keeps it after fit returns: Ctrl-C then ends the process
    through Ray's abort path (exit 1, no message), and a later Ctrl-C, say while serving,
    aborts a finished controller. From a helper thread Ctrl-C stays a KeyboardInterrupt
    here; the local Ray stops with the process, and the checkpoints so far stay for
    resume=true."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _tokenizer(
    shards: Location, output: Location, settings: TrainSettings, first_stage: int, scratch: str
) -> str:
    """A local folder with the run's tokenizer: the configured one, the previous stage
    model's, the one an earlier stage 1 trained, or (tiny, stage 1) a new BPE trained on the
    shards' train split and saved under the output."""
    local = os.path.join(scratch, "tokenizer")
    model = settings.model
    if model.tokenizer:
        source = model.tokenizer
    elif first_stage > 1:
        source = output.join(f"stage{first_stage - 1}", MODEL_DIR, "tokenizer").uri
    elif output.join("tokenizer", "tokenizer.json").exists():
        source = output.join("tokenizer").uri
    elif model.preset == "tiny":
        print("train: training the tiny BPE tokenizer on the shards' train split", flush=True)
        cap = CHINESE_TOKEN_BYTES if split_language(shards) == "zh" else None
        tokenizer = train_bpe_tokenizer(corpus(shards, "train"), model.vocab_size, cap)
        tokenizer.save_pretrained(local)
        if output.join("tokenizer").exists():
            output.join("tokenizer").remove()
        for name in os.listdir(local):
            with open(os.path.join(local, name), "rb") as f:
                output.join("tokenizer", name).write_bytes(f.read())
        return local
    else:
        source = model.llm
    fs = output.fs if source.startswith("s3://") else None
    if model.preset == "paper":
        pretrained_tokenizer(source, local, fs)
    else:
        copy_without_weights(source, local, fs)
    return local


def model_config_for(settings: TrainSettings, manifest: dict, language: Language = "en") -> ModelConfig:
    """The preset's config with the image sizes of the shards, the label space of the
    finding head and the `language` of the training text."""
    model = settings.model
    if model.preset == "paper":
        if not (model.llm and model.vision):
            raise P2MedError("model.preset=paper needs model.llm and model.vision (Hugging Face folders)")
        config = PRESETS["paper"](model.llm, model.vision)
    else:
        config = PRESETS["tiny"]()
    imaging = manifest["imaging"]
    sizes = {key: imaging[key] for key in ("xray_size", "ct_slices", "ct_size")}
    vision = dataclasses.replace(config.vision, **sizes)
    config = config.replace(vision=vision, finding_labels=len(FINDING_LABELS), language=language)
    return config.replace(alignment=model.alignment) if model.alignment else config


def _wait_for_resources(scaling: ScalingSettings) -> None:
    """Fail with a clear message when the cluster cannot hold the workers, plus one CPU for
    the data pipeline's tasks, within the placement timeout (an autoscaling cluster may add
    nodes meanwhile). Without that CPU the workers wait forever for data."""
    need = {"CPU": scaling.workers * scaling.cpus_per_worker + DATA_CPUS}
    if scaling.use_gpu:
        need["GPU"] = scaling.workers * scaling.gpus_per_worker
    deadline = time.monotonic() + scaling.placement_timeout_s
    while True:
        have = ray.cluster_resources()
        short = {k: v for k, v in need.items() if have.get(k, 0) < v}
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        if scaling.placement_strategy == "STRICT_SPREAD" and nodes < scaling.workers:
            short["nodes"] = scaling.workers
        if not short:
            return
        if time.monotonic() > deadline:
            has = {**have, "nodes": nodes}
            missing = ", ".join(f"{v:g} {k} (the cluster has {has.get(k, 0):g})" for k, v in short.items())
            raise P2MedError(
                f"the training workers and their data pipeline need {missing}; "
                f"waited {scaling.placement_timeout_s:g} s. {_fewer(short)}"
            )
        time.sleep(1.0)


def _fewer(short: dict[str, float]) -> str:
    """What to change when the cluster lacks `short`'s resources."""
    if "GPU" in short:
        return "Lower scaling.workers or scaling.gpus_per_worker, or add GPU nodes"
    if "nodes" in short:
        return "Lower scaling.workers, add nodes, or use another scaling.placement_strategy"
    return "Lower scaling.workers or scaling.cpus_per_worker, or add nodes"


def _check_previous_stage(output: Location, stage: int) -> None:
    """Stage N > 1 starts from stage N-1's model: it must be there, with its LoRA adapters
    (a model with LoRA merged into the LLM, as eval and serving load it, has none: training
    it would leave the adapters out and, under ZeRO-3, gather and save the whole LLM)."""
    if stage == 1:
        return
    previous = output.join(f"stage{stage - 1}", MODEL_DIR)
    if not previous.join("p2med_config.json").exists():
        raise P2MedError(
            f"stage {stage} starts from stage {stage - 1}'s model, but {previous.uri} holds none; "
            f"train stage {stage - 1} into {output.uri} first (or stage=all)"
        )
    try:
        merged = check_model_folder(previous.uri, previous.fs).merged
    except FileNotFoundError as incomplete:
        raise P2MedError(f"stage {stage} cannot start from stage {stage - 1}'s model: {incomplete}") from None
    if merged:
        raise P2MedError(
            f"stage {stage} starts from {previous.uri}, a model with its LoRA merged into the LLM; "
            f"training needs the adapters: put stage {stage - 1}'s unmerged model there"
        )


def _finished(model: Location) -> bool:
    """Whether a stage's model folder is complete (a crash while saving can leave a part)."""
    try:
        check_model_folder(model.uri, model.fs)
    except FileNotFoundError:
        return False
    return True


def has_progress(output: Location, stages: list[int]) -> bool:
    """Whether any of `stages` has started under `output` (then resume=true continues it)."""
    return any(output.join(f"stage{s}").exists() for s in stages)
