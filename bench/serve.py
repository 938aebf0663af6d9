"""Serving: requests/s at 16 concurrent clients with batching vs batching disabled; p50 and
p99 latency at 1 and 16 clients; Serve's overhead per request vs the same model in-process.

    .venv/bin/python bench/serve.py                 # a few minutes
    .venv/bin/python bench/serve.py --requests 32   # quicker look

Setup: the `tiny` preset (random init; a tokenizer trained on the finding phrases) served by
`p2med.serve_apps` on a local Ray with 2 CPUs as `p2med` starts one (Serve's
throughput-optimized mode and HAProxy ingress), one replica per deployment. Every request
is the same `POST /v1/chat/completions`: one 128 px PNG X-ray, "Write the report.",
`max_tokens` (greedy, so every request generates the same tokens). Clients are threads
of this process, each sending its next request when the last one is answered.

This VM's speed drifts markedly between minutes (docs/performance.md), so each comparison
is measured side by side: both apps (batches of 1 and of 16) are deployed at once and their
16-client runs alternate (`--rounds`, the median of each side counts), and every served
request of the overhead measure is paired with the same work in-process just before it.

- ratio: requests/s at 16 clients, `@serve.batch` with up to 16 requests per batch vs
  batches of 1 (target >= 3).
- latency: p50 and p99 with batching at 1 and at 16 clients.
- overhead: the median over pairs of (one request through HTTP and Serve, batching
  disabled: no batch wait) minus (the same work in this process: decode, encode,
  generate) (target <= 15 ms), with the 95% bootstrap interval of that median. 120
  pairs: one request's work varies by a quarter here from one request to the next, and
  so does the difference of a pair.
- floor: the median latency, measured in the same pairs, of the same request through an
  app of the same shape that does no work (`EmptyIngress` -> `EmptyEncoder` -> `EmptyLLM`):
  what Ray Serve's ingress (HAProxy, the replica's HTTP server) and two handle calls cost
  here by themselves.
"""

# No `from __future__ import annotations`: FastAPI reads the empty ingress's route
# parameters at runtime, and Serve's class-based views cannot resolve string annotations.
import argparse
import base64
import dataclasses
import http.client
import io
import json
import random
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from p2med.platform.ray_runtime import start_local_ray, use_local_ray_env

use_local_ray_env()  # before Ray Serve is imported (see its docstring)

import httpx
import numpy as np
import torch
from fastapi import FastAPI, Request
from PIL import Image
from ray import serve

from p2med.model.checkpoint import load_model, save_model
from p2med.model.generation import GenerationSettings, encode_prompts, generate
from p2med.model.interleave import Images
from p2med.model.presets import build_model, tiny_config
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.data.image_files import imaging_for
from p2med.platform.data.prompts import INSTRUCTIONS
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.serve_apps.app import build_app
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
    """An app with batches of up to `batch` requests and the default batch waits, at its own
    route prefix; its base URL."""
    defaults = ServeSettings(model=model)

    def replica(deployment: ModelDeploymentSettings) -> ModelDeploymentSettings:
        batching = deployment.batch.model_copy(update={"max_batch_size": batch})
        # a quarter CPU: both apps' replicas fit the 2 CPUs (each runs torch on one thread)
        return ModelDeploymentSettings(num_cpus=0.25, max_ongoing_requests=32, batch=batching)

    vision, llm = replica(defaults.vision), replica(defaults.llm)
    settings = ServeSettings(model=model, api_keys=[KEY], demo=False, vision=vision, llm=llm, port=PORT)
    name = f"bench-batch{batch}"
    serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{PORT}/{name}"


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


def in_process(model_dir: str, png: bytes, max_tokens: int) -> tuple[Callable[[], None], tuple[int, ...]]:
    """A function doing one request's work without Serve (decode, encode, generate), and
    the shape of the image's encoding, (N + K, D)."""
    model, tokenizer = load_model(model_dir, merge=True)
    imaging = imaging_for(model.config)
    settings = GenerationSettings(max_new_tokens=max_tokens)
    ids, mask = encode_prompts(tokenizer, [f"{IMAGE_TOKEN}\n{TEXT}"])

    @torch.inference_mode()
    def encode() -> torch.Tensor:
        _, pixels = decode_upload([png], imaging, 2**20)
        return model.encode_images(Images([["xray"]], xray=torch.from_numpy(pixels)[None]))

    def work() -> None:
        with torch.inference_mode():
            generate(model, tokenizer, ids, mask, encode(), settings)

    return work, tuple(encode().shape[1:])


# The empty app asks for no CPU: it does no work, and the two apps hold the 2 CPUs.
empty_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class EmptyEncoder:
    """The VisionEncoder's place in the app without its work: a zero encoding."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.encoding = np.zeros(shape, np.float32)

    async def encode(self, files: list[bytes]) -> np.ndarray:
        return self.encoding


@serve.deployment(ray_actor_options={"num_cpus": 0})
class EmptyLLM:
    async def complete(self, prompt: str, encoding: np.ndarray) -> str:
        return ""


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(empty_api)
class EmptyIngress:
    """Reads the chat request's image and calls the two deployments as `Ingress` does."""

    def __init__(self, vision, llm) -> None:
        self.vision, self.llm = vision, llm

    @empty_api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict:
        chat = json.loads(await request.body())
        url = chat["messages"][0]["content"][0]["image_url"]["url"]
        encoding = self.vision.encode.remote([base64.b64decode(url.partition(",")[2])])
        await encoding
        text = await self.llm.complete.remote(TEXT, encoding)
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def deploy_empty(shape: tuple[int, ...]) -> str:
    """The empty app at /empty, its encodings of `shape`; its base URL."""
    serve.run(
        EmptyIngress.bind(EmptyEncoder.bind(shape), EmptyLLM.bind()), name="empty", route_prefix="/empty"
    )
    return f"http://127.0.0.1:{PORT}/empty"


@dataclasses.dataclass(frozen=True)
class Overhead:
    """What the overhead measure found, in seconds: medians over the pairs, and the
    interval of the first."""

    difference: float  # served - in-process
    interval: tuple[float, float]  # the 95% bootstrap interval of `difference`
    served: float
    local: float
    floor: float  # the same request through the empty app


def median_interval(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """The 95% bootstrap interval of the median of `values` (fixed seed: reruns agree)."""
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def overhead(url: str, empty_url: str, body: dict, work: Callable[[], None], pairs: int) -> Overhead:
    """`pairs` back-to-back runs of one request served, the same work in-process, and the
    same request through the empty app.

    The requests go out as bytes encoded once, over one kept-alive connection of the
    standard library's client: what is measured is Serve's part, not the client's (httpx
    encoding the body as JSON each time added measurably to a request; docs/performance.md)."""
    served, local, empty = [], [], []
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    server = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=300)

    def post(base: str) -> None:
        path = f"{urllib.parse.urlsplit(base).path}/v1/chat/completions"
        connection.request("POST", path, payload, headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{base} answered {response.status}: {answer[:200]!r}")

    try:
        for _ in range(pairs + 2):  # the first two warm up
            for times, call in ((local, work), (served, lambda: post(url)), (empty, lambda: post(empty_url))):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
    finally:
        connection.close()
    served, local, empty = served[2:], local[2:], empty[2:]
    differences = [a - b for a, b in zip(served, local, strict=True)]
    return Overhead(
        statistics.median(differences),
        median_interval(differences),
        statistics.median(served),
        statistics.median(local),
        statistics.median(empty),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="requests per 16-client run")
    parser.add_argument("--rounds", type=int, default=3, help="16-client runs per app, alternating")
    parser.add_argument("--pairs", type=int, default=120, help="served/in-process pairs for the overhead")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    torch.set_num_threads(1)  # in-process work runs as a replica with under one CPU does
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    png = xray_png()
    body = chat_body(png, args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="p2med-bench-serve-") as tmp:
        model = model_folder(Path(tmp))
        urls = {batch: deploy(model, batch) for batch in (1, 16)}
        rates: dict[int, list[float]] = {1: [], 16: []}
        latencies: dict[int, list[float]] = {1: [], 16: []}
        for url in urls.values():
            load(url, body, 4, 8)  # warm up: replicas loaded, first batches run
        for index in range(args.rounds):
            for batch, url in urls.items():
                rps, many = load(url, body, 16, args.requests)
                rates[batch].append(rps)
                latencies[batch] += many
                print(f"round {index + 1}, batch {batch:>2}: 16 clients {rps:5.1f} requests/s", flush=True)
        _, single = load(urls[16], body, 1, max(20, args.requests // 4))
        work, shape = in_process(model, png, args.max_tokens)
        cost = overhead(urls[1], deploy_empty(shape), body, work, args.pairs)
        serve.shutdown()
    rps = {batch: statistics.median(values) for batch, values in rates.items()}
    many = latencies[16]
    print(
        f"serve: ratio {rps[16] / rps[1]:.2f} (requests/s at 16 clients, batching vs none, target >= 3), "
        f"{rps[16]:.1f} vs {rps[1]:.1f}; latency p50/p99 1 client {percentile(single, 50):.0f}/"
        f"{percentile(single, 99):.0f} ms, 16 clients {percentile(many, 50):.0f}/"
        f"{percentile(many, 99):.0f} ms; "
        f"overhead {cost.difference * 1000:.1f} ms per request (95% interval "
        f"{cost.interval[0] * 1000:.1f}-{cost.interval[1] * 1000:.1f}; target <= 15; "
        f"served {cost.served * 1000:.0f} ms, in-process {cost.local * 1000:.0f} ms; Serve's floor, "
        f"the same request through an app of the same shape with no work: {cost.floor * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
