"""Shared fixtures: a real S3-compatible server (moto in server mode) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import boto3
import pytest
import torch

from p2med.platform.ray_runtime import start_local_ray, use_local_ray_env
from p2med.platform.storage import StorageSettings
from tests.support.local_s3 import local_s3_server

use_local_ray_env()  # before a test module imports Ray Serve (see its docstring)
# Ray Train's controller polls its workers every 2 s by default, and a stage ends (or a
# killed worker is noticed) at a poll: every training test, the quickstart's subprocesses
# and the submitted job's head (which inherit this environment) would wait on it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]
S3_KEY, S3_SECRET, S3_REGION = "testing", "testing-secret", "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def attention_as_on_cuda(monkeypatch):
    """Attention as CUDA computes it in bf16: over an empty batch,
    `scaled_dot_product_attention` returns None where the CPU returns an empty tensor. Model
    code must never run attention on no rows; under this, every test that runs the model in
    its own process fails where a GPU would (Ray's workers keep the real function)."""
    real = torch.nn.functional.scaled_dot_product_attention

    def attention(query: torch.Tensor, *args, **kwargs) -> torch.Tensor | None:
        return None if query.shape[0] == 0 else real(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", attention)


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server in its own process, up for the whole test session."""
    with local_s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_storage(s3_endpoint) -> StorageSettings:
    return StorageSettings(
        endpoint_url=s3_endpoint,
        access_key_id=S3_KEY,
        secret_access_key=S3_SECRET,
        region=S3_REGION,
    )


def new_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket (moto rejects s3fs's mkdir for buckets: boto3 creates it)."""
    name = f"p2med-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_endpoint) -> str:
    return new_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def gradio_folder(tmp_path_factory) -> Path:
    """Where the Gradio demo of every app this session serves (its replicas inherit this
    process's environment) puts uploads: the tests check that it keeps none."""
    folder = tmp_path_factory.mktemp("gradio")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def ray_local(gradio_folder):
    """A real local Ray on this machine's 2 cores, shared by the session's tests."""
    import ray

    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuses a test that starts Ray (through `ray_local`) without the `slow` mark, so that
    `pytest -m "not slow"`, the quick lane, never starts Ray."""
    unmarked = [
        item.nodeid
        for item in items
        if "ray_local" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start Ray (fixture ray_local) but are not marked slow; add "
            "`pytestmark = pytest.mark.slow` to their module or `@pytest.mark.slow` to each: "
            + ", ".join(unmarked)
        )


@pytest.fixture(params=["local", "s3"])
def location_uri(request, tmp_path) -> tuple[str, StorageSettings | None]:
    """The same test on local disk and on the local S3 server: (URI, storage config)."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/store", request.getfixturevalue("s3_storage")
