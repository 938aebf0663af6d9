"""The two model deployments of the serving app.

- `VisionEncoder`: uploaded files -> what the LLM reads for the image, (N + K, D): decoded
  by the ingest's preprocessing (`uploads`), encoded and resampled in batches.
- `LLM`: a prompt and its images' encodings -> the completion as a stream of text,
  generated with the KV cache in one running batch that requests join between steps
  (`batching`); each request stops at its own length.

Both load the same model folder; what they compute is in `compute` (free of Ray), run in
a worker thread so that a replica keeps taking requests (and streaming) while it computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import torch
from ray import serve

from p2med.model.checkpoint import load_model
from p2med.platform.data.image_files import imaging_for
from p2med.platform.storage import resolve
from p2med.serve_apps.background import iterate_ahead
from p2med.serve_apps.batching import Feed, JoiningBatcher, Updates
from p2med.serve_apps.compute import Completion, Decoding, ImageEncoding, Request
from p2med.serve_apps.errors import BadUpload
from p2med.serve_apps.settings import ModelDeploymentSettings, ServeSettings
from p2med.serve_apps.uploads import decode_upload


def load_served_model(settings: ServeSettings, replica: ModelDeploymentSettings):
    """The model (LoRA merged, eval mode, on this replica's GPU if it has one) and tokenizer."""
    torch.set_num_threads(max(1, int(replica.num_cpus)))
    location = resolve(settings.model, settings.storage)
    device = torch.device("cuda") if replica.num_gpus > 0 and torch.cuda.is_available() else None
    model, tokenizer = load_model(location.uri, fs=location.fs, merge=True, device=device)
    return model.eval(), tokenizer


@serve.deployment
class VisionEncoder:
    def __init__(self, settings: ServeSettings) -> None:
        model, _ = load_served_model(settings, settings.vision)
        self.encoding = ImageEncoding(model)
        self.imaging = imaging_for(model.config)
        self.max_bytes = settings.max_request_bytes
        self._encode.set_max_batch_size(settings.vision.batch.max_batch_size)
        self._encode.set_batch_wait_timeout_s(settings.vision.batch.batch_wait_timeout_s)

    async def encode(self, files: list[bytes]) -> np.ndarray:
        """One upload (an X-ray file, or a CT's slices or zip) -> (N + K, D) float32.

        Raises:
            BadUpload: the files are not an image the model can read (the client's fault).
        """
        encoded = await self._encode(files)
        if isinstance(encoded, BadUpload):
            raise encoded
        return encoded

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _encode(self, uploads: list[list[bytes]]) -> list[np.ndarray | BadUpload]:
        # decoded in the batch's thread too: a thread of its own per upload cost a
        # round trip through the event loop each, costlier than decoding a small PNG
        # (docs/performance.md, serve)
        return await asyncio.to_thread(self._encode_now, uploads)

    @torch.inference_mode()
    def _encode_now(self, uploads: list[list[bytes]]) -> list[np.ndarray | BadUpload]:
        """Uploads -> their encodings; an upload that is not an image gets its refusal
        instead, and the rest of the batch goes on."""
        decoded: list[np.ndarray | BadUpload] = []
        for files in uploads:
            try:
                decoded.append(decode_upload(files, self.imaging, self.max_bytes)[1])
            except BadUpload as refusal:
                decoded.append(refusal)
        images = [d for d in decoded if isinstance(d, np.ndarray)]
        encodings = iter(self.encoding.encode(images) if images else [])
        return [next(encodings) if isinstance(d, np.ndarray) else d for d in decoded]


@serve.deployment
class LLM:
    def __init__(self, settings: ServeSettings) -> None:
        self.decoding = Decoding(*load_served_model(settings, settings.llm))
        batch = settings.llm.batch
        self._batcher = JoiningBatcher(self._decode, batch.max_batch_size, batch.batch_wait_timeout_s)

    async def stream(self, completion: Completion, *encoded: np.ndarray) -> AsyncIterator[str]:
        """The completion's text, piece by piece; `encoded`: its images' encodings in prompt order.

        Raises:
            ClientError: the prompt and images do not fit the model (placeholders, context),
                checked here so that one bad request cannot fail the batch it would join.
        """
        async for piece in self._pieces(Request(completion, list(encoded), streaming=True)):
            yield piece

    async def complete(self, completion: Completion, *encoded: np.ndarray) -> str:
        """The whole completion in one reply (raises as `stream` does)."""
        pieces = self._pieces(Request(completion, list(encoded), streaming=False))
        return "".join([piece async for piece in pieces])

    async def _pieces(self, request: Request) -> AsyncIterator[str]:
        self.decoding.check(request.completion.prompt, len(request.encoded))
        async for piece in self._batcher.submit(request):
            yield piece

    def _decode(self, feed: Feed[Request]) -> AsyncIterator[Updates]:
        """Updates of the running batch's requests (`Decoding.steps`), computed in a worker
        thread that does not wait for the event loop between them."""
        return iterate_ahead(self.decoding.steps(feed))
