"""The serving tests' app and inputs: one deployment of the app for the whole session, on
an untrained tiny model (what it writes is not tested, only that the app serves it), and
DICOM files from the synthetic generator, zipped or not."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest
import torch
from ray import serve
from transformers import PreTrainedTokenizerBase

from p2med.model.checkpoint import save_model
from p2med.model.mllm import P2MedModel
from p2med.model.presets import build_model, tiny_config
from p2med.model.tokenizer import train_bpe_tokenizer
from p2med.platform.data.synth import SynthSettings
from p2med.platform.data.synth import generate as synthesize
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.storage import resolve
from p2med.serve_apps.app import build_app
from p2med.serve_apps.server import APP_NAME
from p2med.serve_apps.settings import BatchSettings, ModelDeploymentSettings, ServeSettings
from tests.conftest import free_port

RAW = SynthSettings(patients=4, ct_fraction=1.0, xray_size=96, ct_slices=10, ct_size=40, workers=1)
KEY = "test-key"
SMALL = ModelDeploymentSettings(num_cpus=0.25, max_replicas=2, batch=BatchSettings(max_batch_size=4))


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-raw")
    synthesize(RAW, resolve(str(root)), progress=False)
    return root


@pytest.fixture(scope="session")
def xray_dicom(raw) -> bytes:
    return next((raw / "dicom" / "xray").glob("*.dcm")).read_bytes()


@pytest.fixture(scope="session")
def ct_series(raw) -> list[bytes]:
    """One CT series' slice files, in file-name order (not slice order)."""
    series = next(p for p in (raw / "dicom" / "ct").iterdir() if p.is_dir())
    return [p.read_bytes() for p in sorted(series.glob("*.dcm"))]


def zipped(files: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, data in enumerate(files):
            archive.writestr(f"series/{i:03d}.dcm", data)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    corpus = ["Findings: consolidation in the right lower lobe. Impression: pneumonia."] * 40
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=400)
    config = tiny_config()
    vision = dataclasses.replace(config.vision, xray_size=64, ct_slices=8, ct_size=32)
    config = config.replace(vision=vision, finding_labels=len(FINDING_LABELS))
    folder = tmp_path_factory.mktemp("serve-model") / "model"
    torch.manual_seed(0)  # the same untrained model every run
    model = build_model(config, tokenizer)
    silence_byte_fragments(model, tokenizer)
    save_model(model, tokenizer, str(folder))
    return folder


def silence_byte_fragments(model: P2MedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Zero the output rows of tokens that are not text on their own (one byte of a
    multi-byte character): an untrained model picks random tokens, and a report of byte
    fragments decodes to nothing, which the tests could not tell from a broken stream.
    The remaining tokens' random logits beat the zeros, so its greedy reports are text."""
    head = model.llm.get_output_embeddings().weight
    with torch.no_grad():
        for token in range(len(head)):
            if "\ufffd" in tokenizer.decode([token]):
                head[token] = 0


@pytest.fixture(scope="session")
def settings(model_dir) -> ServeSettings:
    return ServeSettings(
        model=str(model_dir),
        api_keys=[KEY],
        max_request_mb=1.0,
        default_max_tokens=6,
        max_tokens_limit=32,
        vision=SMALL,
        llm=SMALL,
        port=free_port(),
    )


@pytest.fixture(scope="session")
def base_url(ray_local, settings):
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    yield f"http://{settings.host}:{settings.port}"
    serve.shutdown()
