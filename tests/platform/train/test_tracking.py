"""A stage's tracking on rank 0, in this process: MLflow metrics every `log_every_steps`
(and at the last step), validation losses, the loss curve, and a restarted worker going
on with the same run. Inside a training run on a local Ray: test_train.py."""

from __future__ import annotations

import io
import shutil
import tarfile

import mlflow
import pytest

from p2med.platform.storage import resolve
from p2med.platform.train.settings import TrackingSettings
from p2med.platform.train.tracking import History, Tracker, TrackingStore


@pytest.fixture(autouse=True)
def own_mlflow_state(monkeypatch):
    """MLflow keeps its tracking URI and active run per process: each test leaves them as it found them."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = mlflow.get_tracking_uri()
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(uri)


def metric_steps(store: TrackingStore, run_id: str, name: str) -> list[int]:
    client = mlflow.MlflowClient(tracking_uri=store.uri)
    return [m.step for m in client.get_metric_history(run_id, name)]


def test_metrics_the_curve_and_a_restart_that_continues_the_run(tmp_path, capsys):
    store = TrackingStore.of(None, resolve(str(tmp_path / "run")), stage=1)
    assert store.uri == f"file://{tmp_path / 'run' / 'mlruns'}" and store.archive is None
    settings = TrackingSettings(log_every_steps=2)
    tracker = Tracker(1, 5, store, settings, {"lr": 0.1}, run_id=None, history=History())
    for step in (1, 2, 3):
        tracker.step(step, loss=1.0 / step, metrics={"lr": 0.1})
    tracker.validation(2, val_loss=0.7)
    run_id, history = tracker.run_id, tracker.history
    mlflow.end_run()  # the worker dies here; its replacement gets the run id and the history

    again = Tracker(1, 5, store, settings, {"lr": 0.1}, run_id=run_id, history=history)
    assert again.run_id == run_id
    for step in (4, 5):
        again.step(step, loss=1.0 / step, metrics={"lr": 0.1})
    curve = tmp_path / "loss.png"
    again.finish(str(curve))

    assert metric_steps(store, run_id, "loss") == [2, 4, 5]  # every 2 steps, and the last
    assert metric_steps(store, run_id, "val_loss") == [2]
    assert history.steps == [1, 2, 3, 4, 5] and history.val_steps == [2]
    assert curve.read_bytes()[:4] == b"\x89PNG"
    run = mlflow.MlflowClient(tracking_uri=store.uri).get_run(run_id)
    assert run.data.params == {"lr": "0.1"} and run.info.status == "FINISHED"
    printed = capsys.readouterr().out
    assert "train: stage 1 step 2/5 loss 0.5000" in printed and "validation loss 0.7000" in printed


@pytest.mark.s3
def test_a_remote_outputs_store_is_copied_there_at_each_checkpoint_and_a_restart_goes_on_from_it(
    bucket, s3_storage, tmp_path
):
    """MLflow cannot write to S3: a local store, archived there at every validation
    (checkpoint). A replacement rank 0 on another node (no local store) continues the same
    run from the archive."""
    output = resolve(f"s3://{bucket}/runs/r1", s3_storage)
    store = TrackingStore.of(None, output, stage=3)
    assert (
        store.uri.startswith("file://") and store.archive.uri == f"s3://{bucket}/runs/r1/mlruns/stage3.tar.gz"
    )
    assert TrackingStore.of(None, output, stage=3) == store  # the same local path for a replacement
    settings = TrackingSettings(log_every_steps=1)
    tracker = Tracker(3, 4, store, settings, {"lr": 0.1}, run_id=None, history=History())
    for step in (1, 2):
        tracker.step(step, loss=1.0 / step, metrics={})
    tracker.validation(2, val_loss=0.7)
    tracker.step(3, loss=0.3, metrics={})  # after the checkpoint: lost with the worker
    run_id = tracker.run_id
    mlflow.end_run()
    shutil.rmtree(store.local_path)

    again = Tracker(3, 4, store, settings, {"lr": 0.1}, run_id=run_id, history=History())
    assert again.run_id == run_id
    for step in (3, 4):
        again.step(step, loss=1.0 / step, metrics={})
    again.finish(str(tmp_path / "loss.png"))
    shutil.rmtree(store.local_path)

    copy = tmp_path / "mlruns"
    with tarfile.open(fileobj=io.BytesIO(store.archive.read_bytes())) as archive:
        archive.extractall(copy, filter="data")
    downloaded = TrackingStore(f"file://{copy}")
    assert metric_steps(downloaded, run_id, "loss") == [1, 2, 3, 4]
    assert metric_steps(downloaded, run_id, "val_loss") == [2]
    assert mlflow.MlflowClient(tracking_uri=downloaded.uri).get_run(run_id).info.status == "FINISHED"


def test_a_configured_uri_wins(tmp_path):
    configured = TrackingStore.of("http://mlflow:5000", resolve(str(tmp_path)), stage=1)
    assert configured == TrackingStore("http://mlflow:5000") and configured.local_path is None
