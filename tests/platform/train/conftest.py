"""Stage 1 trained once for the session, the way the README's cluster command runs it: a
real local head (`ray start --head`), then `ray job submit --working-dir . -- p2med train`
writing to S3 with the credentials in the cluster's environment, as on a cluster node.
`test_job_submit.py` checks what it wrote; `test_train.py` trains stage 2 on from it (each
Ray Train fit costs tens of seconds of start-up whatever its steps)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2med.platform.storage import Location, StorageSettings, resolve
from tests.conftest import free_port, new_bucket

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent  # the venv's ray and p2med
STAGE1_STEPS = 4


@dataclass
class SubmittedRun:
    """The submitted job's console output and the run it wrote (stage 1 on S3)."""

    output: str
    run: Location


@pytest.fixture(scope="session")
def submitted_stage1(s3_endpoint, s3_storage, small_ingest) -> SubmittedRun:
    run = resolve(f"s3://{new_bucket(s3_endpoint)}/runs/job", s3_storage)
    command = [
        "p2med", "train", "--config", "train/tiny.yaml", "stage=1",
        f"shards={small_ingest.shards.path}", f"output={run.uri}", "model.vocab_size=512",
        f"stages.stage1.steps={STAGE1_STEPS}", "stages.stage1.batch_size=2", "data.max_length=96",
        "checkpoint.every_steps=2", "checkpoint.val_batches=1", "tracking.log_every_steps=1",
    ]  # fmt: skip
    with ray_head(s3_storage) as (address, env):
        submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--"]
        for _ in range(15):  # the head's job agent comes up a little after its dashboard
            done = subprocess.run(submit + command, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in done.stderr:
                break
            time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SubmittedRun(done.stdout + done.stderr, run)


@contextlib.contextmanager
def ray_head(s3_storage: StorageSettings) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head started the way an operator starts one, the S3 credentials in its
    environment: its dashboard address and that environment. `--block` ties the head's
    processes to this one command: stopping it stops exactly this cluster (`ray stop` would
    also stop the test session's own Ray, and this process with it)."""
    credentials = {
        "AWS_ENDPOINT_URL": s3_storage.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_storage.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_storage.secret_access_key.get_secret_value(),
    }
    # Ray 2.60 turns token authentication on for a head when a token file exists
    # (~/.ray/auth_token, written by the first local Ray), but `ray job submit` sends the
    # token only when RAY_AUTH_MODE says so: set for both, as a `ray.init` in this
    # process would have set it
    env = {
        **os.environ,
        **credentials,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": "",
        "RAY_AUTH_MODE": "token",
    }
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    start = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        # the session's own Ray may hold the default agent ports
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
    ]  # fmt: skip
    # stopped after its job has finished: nothing to drain (a SIGTERM otherwise waits 30 s for it)
    quick_stop = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    process = subprocess.Popen(start, env=quick_stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{address}/api/version"):
            assert process.poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1)
        yield address, env
    finally:
        process.terminate()
        process.wait(timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(url: str) -> bool:
    """Whether a server answers at `url` (an HTTP error is an answer: Ray 2.60 asks for a token)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def unpacked_mlruns(run: Location, stage: int, target: Path) -> Path:
    """A stage's MLflow store of an S3 run (mlruns/stage<N>.tar.gz), unpacked into `target`."""
    with tarfile.open(fileobj=io.BytesIO(run.join("mlruns", f"stage{stage}.tar.gz").read_bytes())) as archive:
        archive.extractall(target, filter="data")
    return target


def mlflow_runs(mlruns: Path) -> list[Path]:
    return [p.parent for p in mlruns.glob("*/*/meta.yaml")]


def metric_steps(run: Path, name: str) -> list[int]:
    return [int(line.split()[2]) for line in (run / "metrics" / name).read_text().splitlines()]
