"""What rank 0 reports while a stage trains: console progress lines with an ETA, MLflow
metrics and params, and a loss-curve PNG at the end.

MLflow's file store (the default, under <output>/mlruns) is in maintenance mode in MLflow 3
and refuses to start unless MLFLOW_ALLOW_FILE_STORE is set; it still works, needs no
server, and any other tracking URI can be configured instead. MLflow cannot write its file
store to S3, so for an S3 output it lives on rank 0's disk and is archived to the output
at every checkpoint: a replaced rank 0, or a resumed stage, continues the same run from there.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from p2med.platform.storage import Location
from p2med.platform.train.settings import TrackingSettings


@dataclass
class History:
    """Loss history of a stage; it travels in checkpoints so curves survive restarts."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TrackingStore:
    """Where MLflow writes: a configured URI, the file store <output>/mlruns, or, for a
    remote output, a local file store kept in step with the archive
    <output>/mlruns/stage<N>.tar.gz (one object: replaced whole, never half-written, and
    it keeps the empty folders MLflow's store needs, which S3 has no notion of)."""

    uri: str
    archive: Location | None = None

    @classmethod
    def of(cls, configured: str | None, output: Location, stage: int) -> TrackingStore:
        if configured:
            return cls(configured)
        if not output.is_s3:
            return cls("file://" + os.path.abspath(output.join("mlruns").path))
        archive = output.join("mlruns", f"stage{stage}.tar.gz")
        # one local path per archive: the run's artifact locations, which MLflow writes into
        # the store as absolute paths, stay valid for a replaced rank 0 and a resumed stage
        digest = hashlib.sha256(archive.uri.encode()).hexdigest()[:16]
        return cls("file://" + os.path.join(tempfile.gettempdir(), f"p2med-mlruns-{digest}"), archive)

    @property
    def local_path(self) -> str | None:
        """The local copy of a remote store (None: MLflow writes to `uri` itself)."""
        return self.uri.removeprefix("file://") if self.archive is not None else None

    def download(self) -> None:
        """Make the local copy what the archive holds (nothing, for a new stage)."""
        if self.local_path is None:
            return
        shutil.rmtree(self.local_path, ignore_errors=True)
        if self.archive.exists():
            with tarfile.open(fileobj=io.BytesIO(self.archive.read_bytes())) as packed:
                packed.extractall(self.local_path, filter="data")

    def upload(self) -> None:
        """Replace the archive with the local store."""
        if self.local_path is None:
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as packed:
            packed.add(self.local_path, arcname=".")
        self.archive.write_bytes(buffer.getvalue())


class Tracker:
    """Progress of one stage on rank 0."""

    def __init__(
        self,
        stage: int,
        total_steps: int,
        store: TrackingStore,
        settings: TrackingSettings,
        params: dict[str, Any],
        run_id: str | None,
        history: History,
    ) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        if store.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        store.download()
        self._mlflow, self.store = mlflow, store
        mlflow.set_tracking_uri(store.uri)
        mlflow.set_experiment(settings.experiment)
        try:  # a restarted worker continues the stage's run when its store survived
            self.run = mlflow.start_run(run_id=run_id) if run_id else None
        except MlflowException:
            self.run = None
        if self.run is None:
            self.run = mlflow.start_run(run_name=f"stage{stage}")
            mlflow.log_params(params)
        self.stage, self.total, self.log_every, self.history = (
            stage,
            total_steps,
            settings.log_every_steps,
            history,
        )
        self._started, self._first_step = time.perf_counter(), None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def step(self, step: int, loss: float, metrics: dict[str, float]) -> None:
        """Record a training step; print a progress line every `log_every` steps."""
        self.history.steps.append(step)
        self.history.losses.append(loss)
        if self._first_step is None:
            self._first_step, self._started = step, time.perf_counter()
        if step % self.log_every and step != self.total:
            return
        self._mlflow.log_metrics({"loss": loss, **metrics}, step=step)
        done = step - self._first_step
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (self.total - step) if done else float("nan")
        rates = (
            f"{metrics.get('samples_per_s', 0):.1f} samples/s, {metrics.get('tokens_per_s', 0):.0f} tokens/s"
        )
        where = f"train: stage {self.stage} step {step}/{self.total}"
        print(
            f"{where} loss {loss:.4f} lr {metrics.get('lr', 0):.2e} {rates}, ETA {_duration(eta)}", flush=True
        )

    def validation(self, step: int, val_loss: float) -> None:
        """Record the validation loss of a checkpoint, and archive a local store for a remote
        output: a replacement continues from the checkpoint's state, metrics included."""
        self.history.val_steps.append(step)
        self.history.val_losses.append(val_loss)
        self._mlflow.log_metrics({"val_loss": val_loss}, step=step)
        self.store.upload()
        print(
            f"train: stage {self.stage} step {step}/{self.total} validation loss {val_loss:.4f}", flush=True
        )

    def finish(self, curve_path: str) -> None:
        """Write the loss curve to `curve_path` (a local PNG), attach it, close the run, and
        archive a local store for a remote output."""
        plot_losses(self.history, f"Stage {self.stage}", curve_path)
        self._mlflow.log_artifact(curve_path)
        self._mlflow.end_run()
        self.store.upload()


def plot_losses(history: History, title: str, path: str) -> None:
    """Training loss per step and validation loss at its checkpoints, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(history.steps, history.losses, label="training loss", linewidth=1)
    if history.val_steps:
        ax.plot(history.val_steps, history.val_losses, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
