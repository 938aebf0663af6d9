"""Settings of three-stage training, validated when loaded (imports stay light: the CLI
builds `--help` from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from p2med.platform.config import Settings
from p2med.platform.data.stage_settings import TaskWeights


class StageSettings(Settings):
    """One training stage."""

    steps: int = Field(100, ge=1)
    """Optimizer steps; the stage's data repeats (reshuffled) as often as it takes."""
    batch_size: int = Field(8, ge=1)
    """Samples per worker per step."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate (after warm-up, then cosine decay to 10%)."""
    warmup_steps: int = Field(10, ge=0)
    """Steps of linear warm-up to the peak learning rate."""
    micro_batches: int = Field(1, ge=1)
    """Each batch's rows, sorted by length, go through the model in this many groups,
    each padded only to its own longest row; their losses add up to the batch's, so the
    gradient is the same. The tiny set's stage-3 rows run from a few dozen tokens to
    `max_length`, so groups of similar rows pad far fewer positions than the whole batch
    would; stage 2's captions are of similar length, and its trained vision encoder runs
    slower on smaller groups. Batches stay random: making batches of similar lengths
    instead (as transformers' `group_by_length`) made them batches of similar labels (a
    report grows with its findings), and the finding head read bench X-rays worse
    (docs/performance.md)."""


class AlignmentStageSettings(StageSettings):
    """Stage 2, which can start with cheap steps for a from-scratch vision encoder."""

    vision_steps: int = Field(0, ge=0)
    """The first steps of `steps` train the vision path on the finding loss alone, without
    running the LLM: a step costs about half, and the encoder learns to see lesions before
    the language-model loss aligns the projection to the LLM."""

    @model_validator(mode="after")
    def _leaves_alignment_steps(self) -> AlignmentStageSettings:
        if self.vision_steps >= self.steps:
            raise ValueError(
                f"vision_steps ({self.vision_steps}) must be fewer than steps ({self.steps}): "
                "the rest align the projection to the LLM"
            )
        return self


def _stage(steps: int, lr: float) -> Any:
    return Field(default_factory=lambda: StageSettings(steps=steps, lr=lr))


class StagesSettings(Settings):
    """Per-stage settings (DESIGN.md: 1 medical text, 2 image-text alignment, 3 instructions)."""

    stage1: StageSettings = _stage(150, 1e-3)
    # A from-scratch vision encoder (tiny) needs the long warm-up: without it, early large
    # steps drive the finding head to "nothing found" and stage 2 stalls there.
    stage2: AlignmentStageSettings = Field(
        default_factory=lambda: AlignmentStageSettings(steps=250, lr=1e-3, warmup_steps=100)
    )
    stage3: StageSettings = _stage(300, 3e-4)

    def of(self, stage: int) -> StageSettings:
        return getattr(self, f"stage{stage}")


class OptimizerSettings(Settings):
    """AdamW (each stage's schedule is in its `StageSettings`)."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient norm clipping (0: none)."""
    alignment_weight: float = Field(1.0, ge=0)
    """Weight of the finding loss of stages 2 and 3 (images -> the findings their reports
    state) next to the language-model loss."""


class ScalingSettings(Settings):
    """Ray Train workers."""

    workers: int = Field(2, ge=1)
    """Training workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU (or gpus_per_worker) per worker, nccl, bf16."""
    cpus_per_worker: float = Field(0.5, gt=0)
    """CPUs reserved for each worker; one CPU of the cluster must stay free for the data tasks."""
    gpus_per_worker: float = Field(1.0, ge=0)
    """Used when use_gpu is true."""
    placement_timeout_s: float = Field(60.0, gt=0)
    """How long to wait for the cluster to offer the workers' resources before giving up."""
    max_failures: int = Field(2, ge=0)
    """Worker failures (a killed process, a lost node) to recover from, each time from the last checkpoint."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers over nodes: PACK fills a node first (the fastest collectives);
    STRICT_SPREAD puts every worker on a node of its own (needs as many nodes as workers)."""


class DeepSpeedSettings(Settings):
    """DeepSpeed ZeRO; bf16 on GPU, fp32 on CPU."""

    zero_stage: Literal[2, 3] = 2
    """ZeRO-2 partitions optimizer state and gradients; ZeRO-3 the parameters too."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Merged last into the generated DeepSpeed config, e.g. {"zero_optimization": {"overlap_comm": true}}."""


class CheckpointSettings(Settings):
    """Ray Train checkpoints (every rank's DeepSpeed shard) under the output."""

    every_steps: int = Field(50, ge=1)
    """Validate and checkpoint every this many steps, and at the end."""
    keep_best: int = Field(2, ge=1)
    """Checkpoints kept per stage, best validation loss first."""
    val_batches: int = Field(8, ge=1)
    """Batches per worker in a validation pass."""


class TrackingSettings(Settings):
    """MLflow tracking and console progress."""

    mlflow_uri: str | None = None
    """Any MLflow tracking URI; unset: a file store under <output>/mlruns."""
    experiment: str = "p2med"
    """MLflow experiment name."""
    log_every_steps: int = Field(10, ge=1)
    """A console progress line (and MLflow metrics) every this many steps."""


class ModelSettings(Settings):
    """Which model to train."""

    preset: Literal["tiny", "paper"] = "tiny"
    """`tiny`: random init, CPU-sized; `paper`: pretrained LLaMA and CLIP folders."""
    llm: str | None = None
    """`paper`: Hugging Face LLaMA folder (local or s3://)."""
    vision: str | None = None
    """`paper`: Hugging Face CLIP vision folder (local or s3://)."""
    tokenizer: str | None = None
    """Tokenizer folder; unset: `tiny` trains a BPE on the shards' train split, `paper` uses the LLaMA's."""
    vocab_size: int = Field(4096, ge=512)
    """Size of the BPE that `tiny` trains."""
    alignment: Literal["none", "head", "slots"] | None = None
    """The finding head's part (`p2med.model.alignment`): `slots` (its verdict fed to the
    LLM), `head` (an auxiliary loss on the latents only) or `none` (no head: the paper's
    architecture); unset: `slots` for `tiny`, `head` for `paper`."""
    gradient_checkpointing: bool | None = None
    """Recompute each LLM and CLIP layer's activations in the backward pass instead of
    keeping them (less memory, about a third more compute); unset: on for `paper`, off for
    `tiny`, whose activations are small."""

    attention: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] = "sdpa"
    """The LLM's and CLIP's attention kernel (transformers' `attn_implementation`): `sdpa`
    (torch's, on CPU and GPU), `eager`, or on GPUs with their package installed
    `flash_attention_2` / `flash_attention_3` (bf16), `flex_attention`."""

    @property
    def checkpoints_activations(self) -> bool:
        """Whether training uses gradient checkpointing (`gradient_checkpointing`, resolved)."""
        if self.gradient_checkpointing is None:
            return self.preset == "paper"
        return self.gradient_checkpointing


class DataSettings(Settings):
    """How shards become stage samples."""

    max_length: int = Field(256, ge=16)
    """Tokens per sample before images expand (targets are truncated to fit)."""
    task_weights: TaskWeights = TaskWeights()
    """Stage-3 task mixing."""
    shuffle_buffer: int = Field(256, ge=0)
    """Samples in each worker's local shuffle buffer (0: no shuffling)."""
    materialize: bool = False
    """Encode each stage's training and validation samples once and keep them in Ray's
    object store: a small set read for many epochs then skips re-reading and re-encoding
    its shards every epoch (a restart of the streaming pipeline costs seconds, and a small
    set's epoch is only a handful of steps; docs/performance.md), and the ranks' validation
    passes share one read. Only for sets that fit in memory."""


class TrainSettings(Settings):
    """Everything `p2med train` needs besides the locations."""

    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    stages: StagesSettings = StagesSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    scaling: ScalingSettings = ScalingSettings()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    tracking: TrackingSettings = TrackingSettings()
    seed: int = 0
    """Seeds the initial weights, data mixing and shuffling."""

    @model_validator(mode="after")
    def _vision_steps_need_a_head(self) -> TrainSettings:
        if self.model.alignment == "none" and self.stages.stage2.vision_steps:
            raise ValueError(
                "model.alignment=none has no finding head, so stage 2 has no vision steps: "
                "set stages.stage2.vision_steps=0"
            )
        return self
