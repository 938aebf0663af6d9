"""The README's cluster command on a real local head: `ray start --head`, then
`ray job submit --working-dir . -- p2med train ...` writing to S3 (the credentials in the
cluster's environment, as on a cluster node), waited for until it succeeds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from p2med.platform.storage import resolve
from tests.conftest import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent  # the venv's ray and p2med


@pytest.fixture
def head(s3_storage):
    """A Ray head started the way an operator starts one; its dashboard address. `--block`
    ties the head's processes to this one command: stopping it stops exactly this cluster
    (`ray stop` would also stop the test session's own Ray, and this process with it)."""
    credentials = {
        "AWS_ENDPOINT_URL": s3_storage.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_storage.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_storage.secret_access_key.get_secret_value(),
    }
    env = {**os.environ, **credentials, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": ""}
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    start = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        # the session's own Ray holds the default agent ports
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


@pytest.mark.s3
def test_train_runs_as_a_submitted_ray_job_writing_to_s3(head, ray_local, small_ingest, bucket, s3_storage):
    """Stage 1 with its output on S3: the tokenizer it trains, checkpoints, model, MLflow."""
    address, env = head
    shards, output = small_ingest.shards.path, f"s3://{bucket}/runs/job"
    command = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
        "p2med", "train", "--config", "train/tiny.yaml", "stage=1", f"shards={shards}", f"output={output}",
        "stages.stage1.steps=2", "stages.stage1.batch_size=2", "checkpoint.every_steps=2",
        "checkpoint.val_batches=1", "model.vocab_size=512", "data.max_length=64",
    ]  # fmt: skip
    for _ in range(15):  # the head's job agent comes up a little after its dashboard
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    written = resolve(output, s3_storage)
    for path in (
        ("tokenizer", "tokenizer.json"),
        ("stage1", "model", "p2med_config.json"),
        ("stage1", "ray", "checkpoint_manager_snapshot.json"),
        ("mlruns", "stage1.tar.gz"),
    ):
        assert written.join(*path).exists(), path
