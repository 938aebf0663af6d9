"""The whole pipeline in one command: synth -> ingest -> three training stages -> eval -> serve.

p2med quickstart                                  # everything under runs/<date>-<time>/, then serve
p2med quickstart --no-serve root=s3://bucket/runs # on a cluster: ray job submit ... -- p2med quickstart ...
p2med quickstart resume=runs/20261128-201503      # continue an interrupted run where it stopped
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr

from p2med import configs
from p2med.platform.config import Settings, load_config, validate
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest_settings import IngestSettings
from p2med.platform.data.synth import SynthSettings
from p2med.platform.eval.settings import EvalSettings, InferenceSettings
from p2med.platform.storage import StorageSettings
from p2med.platform.train.settings import TrainSettings
from p2med.serve_apps.settings import ServeSettings

if TYPE_CHECKING:
    from p2med.platform.run_directory import RunDirectory

PHASES = ("synth", "ingest", "train", "eval")
# Never written into the run's saved settings: keys, and connection settings (credentials)
UNSAVED: dict[str, Any] = {
    **dict.fromkeys(("root", "resume", "serve", "storage", "serving"), True),
    "ingest": {"deid": {"key"}},
}
TARGETS = "targets: xray_report findings F1 >= 0.90 and >= 0.40 above text-only; diagnosis accuracy >= 0.85"


def _tiny_training() -> TrainSettings:
    return load_config(TrainSettings, "train/tiny.yaml", packaged=configs.FOLDER)


class JobSettings(Settings):
    root: str = "runs"
    """Where run directories go (<root>/<date>-<time>/): a local path, file:// or s3:// URI."""
    resume: str | None = None
    """A run directory to continue: finished phases are skipped, training goes on from its
    latest checkpoint, with the settings saved in the run (only `serve`, `storage` and
    `serving` come from this command)."""
    serve: bool = True
    """After the evaluation, serve the model (API and Gradio demo) until Ctrl-C; `--no-serve` ends there."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""
    # 1200 patients: the finding head is what limits the reports, and it learns from the
    # number of images more than from more steps over the same ones; the extra patients
    # cost little synth and ingest time (docs/performance.md, Model quality).
    synth: SynthSettings = SynthSettings(
        patients=1200, ct_fraction=0.5, xray_size=256, ct_slices=16, ct_size=96
    )
    """The synthetic P2Med-MD set to generate."""
    # 8 CT slices: a CT then costs the encoder about two X-rays instead of four, which
    # shortens stage 2's vision steps markedly (docs/performance.md, Training speed)
    ingest: IngestSettings = IngestSettings(
        imaging=ImagingSettings(xray_size=128, ct_slices=8, ct_size=64), shard_target_mb=8
    )
    """Shards at the tiny preset's image sizes. No deid.key and no $P2MED_DEID_KEY: a random
    key for this run, never stored (its pseudonyms cannot be recomputed)."""
    train: TrainSettings = Field(default_factory=_tiny_training)
    """Three-stage training; the defaults are train/tiny.yaml."""
    # two one-CPU actors: generation is one torch thread per actor, and training is done
    eval: EvalSettings = EvalSettings(split="test", inference=InferenceSettings(replicas=2))
    """The benchmark, its controls and inference: on the test split, which none of the
    defaults were tuned on (`p2med eval split=dev` scores the split they were)."""
    serving: ServeSettings = ServeSettings()
    """The API and the demo (`model` is the run's stage-3 model). No api_keys and no
    $P2MED_API_KEYS: a random key for this session, printed on the console."""


def run(config: JobSettings) -> None:
    from p2med.platform.ray_runtime import ensure_ray
    from p2med.platform.run_directory import RunDirectory
    from p2med.platform.storage import resolve

    if config.resume:
        run_dir = RunDirectory.open(resolve(config.resume, config.storage))
        saved = validate(JobSettings, run_dir.saved_settings())
        config = saved.model_copy(
            update={key: getattr(config, key) for key in ("resume", "serve", "storage", "serving")}
        )
        done = ", ".join(run_dir.phases()) or "none"
        print(f"quickstart: resuming {run_dir.uri} (finished phases: {done})", flush=True)
    else:
        run_dir = RunDirectory.create(resolve(config.root, config.storage))
        run_dir.save_settings(config.model_dump(mode="json", exclude=UNSAVED))
        print(f"quickstart: run directory {run_dir.uri}", flush=True)
    ensure_ray()
    steps = {"synth": _synth, "ingest": _ingest, "train": _train, "eval": _eval}
    total = time.perf_counter()
    for number, phase in enumerate(PHASES, 1):
        if run_dir.finished(phase):
            print(f"quickstart: [{number}/{len(PHASES)}] {phase}: finished before; skipped", flush=True)
            continue
        print(f"quickstart: [{number}/{len(PHASES)}] {phase}", flush=True)
        started = time.perf_counter()
        try:
            details = steps[phase](config, run_dir)
        except KeyboardInterrupt:
            print(
                f"\nquickstart: interrupted in {phase}; continue with: p2med quickstart resume={run_dir.uri}"
            )
            raise
        seconds = time.perf_counter() - started
        run_dir.finish(phase, seconds, **details)
        print(f"quickstart: {phase} done in {_duration(seconds)}", flush=True)
    _print_summary(run_dir, time.perf_counter() - total)
    if config.serve:
        _serve(config, run_dir)


def _synth(config: JobSettings, run_dir: RunDirectory) -> dict[str, Any]:
    from p2med.jobs import synth

    synth.run(
        synth.JobSettings(**config.synth.model_dump(), out=run_dir.join("raw").uri, storage=config.storage)
    )
    return {}


def _ingest(config: JobSettings, run_dir: RunDirectory) -> dict[str, Any]:
    from p2med.jobs import ingest
    from p2med.platform.data.deid import KEY_ENV, DeidSettings

    settings = config.ingest
    if settings.deid.key is None and not os.environ.get(KEY_ENV):
        print(f"quickstart: de-identifying with a random key for this run (set ${KEY_ENV} to use your own)")
        settings = settings.model_copy(update={"deid": DeidSettings(key=SecretStr(secrets.token_hex(16)))})
    shards = run_dir.join("shards")
    shards.remove()  # an interrupted ingest starts over
    ingest.run(
        ingest.JobSettings(
            **dict(settings), raw=run_dir.join("raw").uri, shards=shards.uri, storage=config.storage
        )
    )
    return {}


def _train(config: JobSettings, run_dir: RunDirectory) -> dict[str, Any]:
    from p2med.jobs import train
    from p2med.platform.train.trainer import has_progress

    output = run_dir.join("train")
    summary = train.run(
        train.JobSettings(
            **dict(config.train),
            shards=run_dir.join("shards").uri,
            output=output.uri,
            resume=has_progress(output, [1, 2, 3]),
            storage=config.storage,
        )
    )
    return {"stages": {f"stage{s.stage}": round(s.seconds, 1) for s in summary.stages if not s.skipped}}


def _eval(config: JobSettings, run_dir: RunDirectory) -> dict[str, Any]:
    from p2med.jobs import eval as eval_job

    metrics = eval_job.run(
        eval_job.JobSettings(
            **dict(config.eval),
            model=run_dir.join("train", "stage3", "model").uri,
            shards=run_dir.join("shards").uri,
            out=run_dir.join("eval").uri,
            storage=config.storage,
        )
    )
    return {"headline": headline(metrics["controls"]), "split": metrics["split"]}


def headline(controls: dict[str, Any]) -> dict[str, float | None]:
    """The figures of the quality targets from an eval's metrics["controls"]."""

    def xray_f1(control: str) -> float | None:
        return controls.get(control, {}).get("tasks", {}).get("xray_report", {}).get("findings_f1")

    return {
        "xray_report_findings_f1": xray_f1("model"),
        "xray_report_findings_f1_text_only": xray_f1("text_only"),
        "diagnosis_accuracy": controls["model"]["overall"]["diagnosis_accuracy"],
    }


def _print_summary(run_dir: RunDirectory, seconds: float) -> None:
    phases = run_dir.phases()
    lines = [f"quickstart: finished in {_duration(seconds)} (this session); run directory {run_dir.uri}"]
    for phase, record in phases.items():
        stages = ", ".join(f"{k} {_duration(v)}" for k, v in record.get("stages", {}).items())
        lines.append(f"  {phase:<7} {_duration(record['seconds']):>8}" + (f"  ({stages})" if stages else ""))
    if "headline" in phases.get("eval", {}):
        figures = phases["eval"]["headline"]
        shown = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in figures.items())
        split = phases["eval"]["split"]
        lines += [f"  scores  {shown} ({split} split)", f"          ({TARGETS})"]
    places = {
        "settings": run_dir.join("settings.yaml").uri,
        "data": f"{run_dir.join('raw', 'manifest.json').uri}, {run_dir.join('shards', 'manifest.json').uri}",
        "models": run_dir.join("train", "stage<1|2|3>", "model").uri + "  (loss curves: stage<N>/loss.png)",
        "MLflow": run_dir.join("train", "mlruns").uri,
        "report": run_dir.join("eval", "report.html").uri,
    }
    lines += [f"  {name:<8} {where}" for name, where in places.items()]
    print("\n".join(lines), flush=True)


def _serve(config: JobSettings, run_dir: RunDirectory) -> None:
    from p2med.serve_apps.server import serve_forever

    serving = config.serving.model_copy(
        update={"model": run_dir.join("train", "stage3", "model").uri, "storage": config.storage}
    )
    if not serving.keys() and not serving.open_access:
        key = secrets.token_urlsafe(24)
        serving = serving.model_copy(update={"api_keys": [SecretStr(key)]})
        print(f"quickstart: API key for this session: {key}  (set $P2MED_API_KEYS to choose your own)")
    serve_forever(serving)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
