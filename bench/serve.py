"""Serving: requests/s at 16 concurrent clients with batching vs batching disabled; p50 and
p99 latency at 1 and 16 clients; Serve's overhead per request vs the same model in-process.

    .venv/bin/python bench/serve.py                 # a few minutes here
    .venv/bin/python bench/serve.py --requests 32   # quicker look

Setup: the `tiny` preset (random init; a tokenizer trained on the finding phrases) served by
`p2med.serve_apps` on a local Ray with 2 CPUs, one replica per deployment. Every request
is the same `POST /v1/chat/completions`: one 128 px PNG X-ray, "Write the report.",
`max_tokens` (greedy, so every request generates the same tokens). Clients are threads
of this process, each sending its next request when the last one is answered.

- ratio: requests/s at 16 clients, `@serve.batch` with up to 16 requests per batch vs
  batches of 1 (target >= 3).
- latency: p50 and p99 with batching at 1 and at 16 clients.
- overhead: p50 at 1 client through HTTP and Serve (batching disabled: no batch wait)
  minus the p50 of the same work in this process: decode, encode, generate (target <= 15 ms).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import ray
import torch
from PIL import Image
from ray import serve

from p2med.model.checkpoint import load_model, save_model
from p2med.model.generation import GenerationSettings, encode_prompts, generate
from p2med.model.interleave import Images
from p2med.model.presets import build_model, tiny_config
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.data.prompts import INSTRUCTIONS
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.serve_apps.app import build_app
from p2med.serve_apps.models import imaging_for
from p2med.serve_apps.server import APP_NAME
from p2med.serve_apps.settings import ModelDeploymentSettings, ServeSettings
from p2med.serve_apps.uploads import decode_upload

KEY, PORT, TEXT = "bench", 8431, "Write the report."


def model_folder(root: Path) -> str:
    corpus = [finding.phrase() for finding in FINDING_LABELS] + list(INSTRUCTIONS.values())
    tokenizer = train_bpe_tokenizer(corpus * 20, vocab_size=512)
    config = tiny_config()
    config = config.replace(
        vision=dataclasses.replace(config.vision, xray_size=128, ct_slices=16, ct_size=64),
        finding_labels=len(FINDING_LABELS),
    )
    torch.manual_seed(0)
    folder = root / "model"
    save_model(build_model(config, tokenizer), tokenizer, str(folder))
    return str(folder)


def xray_png() -> bytes:
    pixels = (np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def chat_body(png: bytes, max_tokens: int) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    content = [image, {"type": "text", "text": TEXT}]
    return {"model": "p2med", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def deploy(model: str, batch: int) -> str:
    """The app with batches of up to `batch` requests and the default batch waits."""
    defaults = ServeSettings(model=model)

    def replica(deployment: ModelDeploymentSettings) -> ModelDeploymentSettings:
        batching = deployment.batch.model_copy(update={"max_batch_size": batch})
        return ModelDeploymentSettings(num_cpus=0.5, max_ongoing_requests=32, batch=batching)

    vision, llm = replica(defaults.vision), replica(defaults.llm)
    settings = ServeSettings(model=model, api_keys=[KEY], demo=False, vision=vision, llm=llm, port=PORT)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{PORT}"


def load(url: str, body: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """(requests/s, latencies in s) of `requests` requests from `clients` threads."""
    latencies: list[float] = []
    left = [requests]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as http:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                started = time.perf_counter()
                response = http.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return requests / (time.perf_counter() - started), latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def in_process(model_dir: str, png: bytes, max_tokens: int, repeats: int) -> float:
    """Median seconds of one request's work without Serve: decode, encode, generate."""
    torch.set_num_threads(1)  # as a replica with under one CPU runs
    model, tokenizer = load_model(model_dir, merge=True)
    imaging = imaging_for(model.config)
    settings = GenerationSettings(max_new_tokens=max_tokens)
    times = []
    for _ in range(repeats + 2):
        started = time.perf_counter()
        _, pixels = decode_upload([png], imaging, 2**20)
        with torch.inference_mode():
            encoded = model.encode_images(Images([["xray"]], xray=torch.from_numpy(pixels)[None]))
        ids, mask = encode_prompts(tokenizer, [f"{IMAGE_TOKEN}\n{TEXT}"])
        generate(model, tokenizer, ids, mask, encoded, settings)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="requests per 16-client run")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    png = xray_png()
    body = chat_body(png, args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="p2med-bench-serve-") as tmp:
        model = model_folder(Path(tmp))
        results = {}
        for batch in (1, 16):
            url = deploy(model, batch)
            load(url, body, 4, 8)  # warm up: replicas loaded, first batches compiled
            _, single = load(url, body, 1, max(20, args.requests // 4))
            rps, many = load(url, body, 16, args.requests)
            results[batch] = (rps, single, many)
            print(
                f"batch {batch:>2}: 16 clients {rps:5.1f} requests/s, p50 {percentile(many, 50):.0f} ms, "
                f"p99 {percentile(many, 99):.0f} ms; 1 client p50 {percentile(single, 50):.0f} ms, "
                f"p99 {percentile(single, 99):.0f} ms",
                flush=True,
            )
            serve.delete(APP_NAME)
        local = in_process(model, png, args.max_tokens, repeats=20)
    serve.shutdown()
    ratio = results[16][0] / results[1][0]
    overhead = percentile(results[1][1], 50) - local * 1000
    _, single, many = results[16]
    print(
        f"serve: ratio {ratio:.2f} (requests/s at 16 clients, batching vs none, target >= 3), "
        f"{results[16][0]:.1f} vs {results[1][0]:.1f}; latency p50/p99 1 client "
        f"{percentile(single, 50):.0f}/{percentile(single, 99):.0f} ms, 16 clients "
        f"{percentile(many, 50):.0f}/{percentile(many, 99):.0f} ms; overhead {overhead:.1f} ms per request "
        f"(target <= 15; {local * 1000:.0f} ms in-process)"
    )


if __name__ == "__main__":
    main()
