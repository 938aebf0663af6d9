"""A two-node Ray cluster on this machine, used once per session the way an operator uses
one: `ray start --head` with the S3 credentials in its environment, `ray start --address`
with nothing in its environment, then

- `ray job submit --working-dir . -- p2med train` training the three stages on S3 under
  ZeRO-3 with one worker per node, one worker killed (SIGKILL) in stage 2 once a
  checkpoint is registered;
- `p2med serve` of the stage-3 model on the same cluster, the LLM's replicas on both nodes,
  the API keys and S3 credentials only in that command's environment.

`test_cluster.py` checks what they did; `test_train.py` resumes a copy of the run. Each
Ray Train fit costs tens of seconds of start-up whatever its steps, so the session has one
cluster and one run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from p2med.platform.errors import StorageError
from p2med.platform.storage import Location, StorageSettings, resolve
from tests.conftest import free_port, new_bucket

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent  # the venv's ray and p2med
STAGE1_STEPS, STAGE2_STEPS = 2, 6
SERVE_KEY = "cluster-test-key"
SECRETS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "P2MED_API_KEYS",
    "P2MED_DEID_KEY",
)


@dataclass
class Cluster:
    address: str  # the head's GCS address (RAY_ADDRESS of a driver that joins)
    dashboard: str  # its dashboard's URL (where jobs are submitted)
    env: dict[str, str]  # the head's environment: the operator's shell, S3 credentials included
    pids: list[int]  # the `ray start` processes of its nodes, parents of all its processes


@dataclass
class ClusterRun:
    """What the session's cluster did."""

    output: str  # the submitted job's console
    run: Location  # the three stages it wrote on S3
    nodes: set[str]  # the cluster's node ids
    trained_on: set[str]  # the nodes of the training workers, all stages and attempts
    served_on: set[str]  # the nodes of the LLM's replicas
    answers: list[int]  # the HTTP statuses of chat requests: four with the key, one without


@pytest.fixture(scope="session")
def cluster_run(s3_endpoint, s3_storage, small_ingest) -> ClusterRun:
    run = resolve(f"s3://{new_bucket(s3_endpoint)}/runs/job", s3_storage)
    command = [
        "p2med", "train", "--config", "train/tiny.yaml", "stage=all",
        f"shards={small_ingest.shards.path}", f"output={run.uri}", "model.vocab_size=512",
        "data.max_length=96", "data.shuffle_buffer=16",
        f"stages.stage1.steps={STAGE1_STEPS}", "stages.stage1.batch_size=2",
        # one image per rank and step: ranks often differ in modality (CT or X-ray), which
        # once broke ZeRO's gradient reduction; the vision steps skip the LLM
        f"stages.stage2.steps={STAGE2_STEPS}", "stages.stage2.batch_size=1", "stages.stage2.vision_steps=3",
        "stages.stage2.warmup_steps=0", "stages.stage3.steps=2", "stages.stage3.batch_size=2",
        "checkpoint.every_steps=2", "checkpoint.val_batches=1", "checkpoint.keep_best=1",
        "tracking.log_every_steps=1", "scaling.placement_strategy=STRICT_SPREAD", "scaling.max_failures=1",
        # ZeRO-3: the ranks' parameter gathers must match whatever image kinds their batches hold
        "deepspeed.zero_stage=3",
    ]  # fmt: skip
    with two_nodes(s3_storage) as cluster:
        output = _train_killing_a_worker(cluster, command, run)
        trained_on = _actor_nodes(cluster, "RayTrainWorker")
        served_on, answers = _serve(cluster, run, s3_storage)
        nodes = {node["node_id"] for node in _state(cluster, "nodes")}
    return ClusterRun(output, run, nodes, trained_on, served_on, answers)


def _train_killing_a_worker(cluster: Cluster, command: list[str], run: Location) -> str:
    """Runs the job; once stage 2's first checkpoint is registered, kills one training worker."""
    submit = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard]
    submit += ["--working-dir", str(REPO), "--"]
    outcome: dict = {}

    def job() -> None:
        for _ in range(15):  # the head's job agent comes up a little after its dashboard
            done = subprocess.run(
                submit + command, env=cluster.env, capture_output=True, text=True, timeout=900
            )
            if "No available agent" not in done.stderr:
                break
            time.sleep(2)
        outcome["done"] = done

    thread = threading.Thread(target=job)
    thread.start()
    snapshot = run.join("stage2", "ray", "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 600
    while not registered_checkpoint(snapshot) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.5)
    if thread.is_alive():  # else the job has ended early: its output below says why
        time.sleep(1)  # past the controller's next poll of the workers (tests/conftest.py sets its interval)
        workers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
            and any(parent.pid in cluster.pids for parent in p.parents())  # not another Ray's
        ]
        assert workers, "no training worker found to kill"
        os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=900)
    done = outcome["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def registered_checkpoint(snapshot: Location) -> bool:
    """Whether Ray Train's controller has taken in a checkpoint (its files alone are not
    enough: a report made just before a worker dies can be lost)."""
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (StorageError, ValueError):  # not written yet
        return False


def _serve(cluster: Cluster, run: Location, s3_storage: StorageSettings) -> tuple[set[str], list[int]]:
    """`p2med serve` joined to the cluster, its keys and S3 credentials in its own
    environment only; a few chat requests; the nodes its LLM replicas ran on."""
    port = free_port()
    driver_env = {
        **cluster.env,
        "RAY_ADDRESS": cluster.address,
        "P2MED_API_KEYS": SERVE_KEY,
        **_credentials(s3_storage),
    }
    serve = [
        str(BIN / "p2med"), "serve", f"model={run.join('stage3', 'model').uri}", f"port={port}",
        "proxy_location=HeadOnly", "demo=false",
        "llm.min_replicas=2", "llm.max_replicas=2", "llm.max_replicas_per_node=1",
    ]  # fmt: skip
    process = subprocess.Popen(
        serve, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:  # all of its output, to the end: a full pipe would stall it
        for line in process.stdout:
            lines.append(line)
            if "ready in" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        # Serve retries a replica that fails to start without end: the timeout ends the hang
        assert ready.wait(timeout=300) and process.poll() is None, "".join(lines[-60:])
        answers = [_chat(port, key) for key in (SERVE_KEY,) * 4 + ("wrong-key",)]
        served_on = _actor_nodes(cluster, "ServeReplica:p2med:LLM", alive=True)
    finally:
        process.terminate()  # `p2med serve` stops on SIGTERM as on Ctrl-C
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
    return served_on, answers


def _chat(port: int, key: str) -> int:
    """The HTTP status of a short chat request."""
    body = {"model": "p2med", "messages": [{"role": "user", "content": "Impression:"}], "max_tokens": 4}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as refusal:
        return refusal.code


def _actor_nodes(cluster: Cluster, class_name: str, alive: bool = False) -> set[str]:
    filters = [f"class_name={class_name}"] + (["state=ALIVE"] if alive else [])
    return {actor["node_id"] for actor in _state(cluster, "actors", *filters)}


def _state(cluster: Cluster, kind: str, *filters: str) -> list[dict]:
    """`ray list <kind>` on the cluster (Ray's State API), as JSON."""
    command = [
        str(BIN / "ray"),
        "list",
        kind,
        "--address",
        cluster.address,
        "--format",
        "json",
        "--limit",
        "1000",
    ]
    command += [part for f in filters for part in ("--filter", f)]
    done = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=120, check=True)
    # an empty list is printed as this sentence whatever the format (Ray 2.60), e.g. while
    # a fresh head's own node has not registered yet
    if done.stdout.strip() == "No resource in the cluster":
        return []
    return json.loads(done.stdout)


@contextlib.contextmanager
def two_nodes(s3_storage: StorageSettings) -> Iterator[Cluster]:
    """A head (2 CPUs, the S3 credentials in its environment, as an operator's head that
    runs jobs) and a second node (1 CPU, none of the secrets in its environment). `--block`
    ties each node's processes to its command: stopping those stops exactly this cluster
    (`ray stop` would also stop the test session's own Ray, and this process with it)."""
    # Ray 2.60 turns token authentication on for a head when a token file exists
    # (~/.ray/auth_token, written by the first local Ray), but `ray job submit` sends the
    # token only when RAY_AUTH_MODE says so: set for all, as a `ray.init` in this process
    # would have set it
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    bare |= {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    bare["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # a cluster: not a local Ray's single-machine mode
    # stopped after its work has finished: nothing to drain (a SIGTERM otherwise waits 30 s)
    bare["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    head_env = bare | _credentials(s3_storage)
    dashboard, gcs = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = [
        "--head", "--num-cpus=2", f"--port={gcs}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", "--include-dashboard=true",
    ]  # fmt: skip
    nodes = [_start_node(head, temp_dir, head_env)]
    address = f"127.0.0.1:{gcs}"
    cluster = Cluster(address, f"http://127.0.0.1:{dashboard}", head_env, [nodes[0].pid])
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{cluster.dashboard}/api/version"):
            assert nodes[0].poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1)
        nodes.append(_start_node([f"--address={address}", "--num-cpus=1"], temp_dir, bare))
        cluster.pids.append(nodes[1].pid)
        while len(_state(cluster, "nodes", "state=ALIVE")) < 2:
            assert nodes[1].poll() is None and time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        yield cluster
    finally:
        for node in reversed(nodes):
            node.terminate()
            node.wait(timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_node(options: list[str], temp_dir: str, env: dict[str, str]) -> subprocess.Popen:
    """`ray start --block` with ports of its own: the session's Ray may hold the defaults,
    and two nodes on one machine cannot share them."""
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        )
    ]  # fmt: skip
    command = [str(BIN / "ray"), "start", "--block", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    return subprocess.Popen(
        command + options + ports, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _credentials(s3_storage: StorageSettings) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": s3_storage.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_storage.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_storage.secret_access_key.get_secret_value(),
    }


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
