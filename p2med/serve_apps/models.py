"""The two model deployments of the serving app.

- `VisionEncoder`: uploaded files -> what the LLM reads for the image, (N + K, D): decoded
  by the ingest's preprocessing (`uploads`), encoded and resampled in batches.
- `LLM`: a prompt and its images' encodings -> the completion as a stream of text,
  generated with the KV cache in one running batch that requests join between steps
  (`batching`); each request stops at its own length.

Both load the same model folder; model compute runs in a worker thread so that a replica
keeps taking requests (and streaming) while it computes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from ray import serve

from p2med.model.checkpoint import load_model
from p2med.model.config import ModelConfig
from p2med.model.generation import GenerationSettings, RunningBatch, TextStream, encode_prompts
from p2med.model.interleave import MODALITIES, Images
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.storage import resolve
from p2med.serve_apps.background import iterate_ahead
from p2med.serve_apps.batching import Admit, JoiningBatcher, Updates
from p2med.serve_apps.errors import BadUpload, ClientError
from p2med.serve_apps.settings import ModelDeploymentSettings, ServeSettings
from p2med.serve_apps.uploads import decode_upload


def load_served_model(settings: ServeSettings, replica: ModelDeploymentSettings):
    """The model (LoRA merged, eval mode, on this replica's GPU if it has one) and tokenizer."""
    torch.set_num_threads(max(1, int(replica.num_cpus)))
    location = resolve(settings.model, settings.storage)
    model, tokenizer = load_model(location.uri, fs=location.fs, merge=True)
    if replica.num_gpus > 0 and torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


def imaging_for(config: ModelConfig) -> ImagingSettings:
    """The preprocessing that made the model's training images (sizes from its config; the
    lung window is the ingest's default)."""
    vision = config.vision
    return ImagingSettings(xray_size=vision.xray_size, ct_slices=vision.ct_slices, ct_size=vision.ct_size)


@serve.deployment
class VisionEncoder:
    def __init__(self, settings: ServeSettings) -> None:
        self.model, _ = load_served_model(settings, settings.vision)
        self.imaging = imaging_for(self.model.config)
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
        encodings = iter(self._encode_pixels(images) if images else [])
        return [next(encodings) if isinstance(d, np.ndarray) else d for d in decoded]

    def _encode_pixels(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """Images of either kind -> their encodings, one forward pass per kind."""
        kinds = ["xray" if p.ndim == 2 else "ct" for p in pixels]
        stacked = {
            kind: torch.from_numpy(np.stack([p for k, p in zip(kinds, pixels, strict=True) if k == kind]))
            for kind in MODALITIES
            if kind in kinds
        }
        on_device = {kind: tensor.to(self.model.device) for kind, tensor in stacked.items()}
        images = Images([[kind] for kind in kinds], **on_device)
        return list(self.model.encode_images(images).float().cpu().numpy())


# A streaming request's text goes to the event loop once per this many seconds of steps,
# and waiting requests join the batch as often: each post wakes the loop, which then holds
# the GIL the decode needs (posting every tiny-model step instead made each request
# noticeably slower, timed inside a replica; docs/performance.md, serve)
STEP_WINDOW_S = 0.025


@dataclass(frozen=True)
class Completion:
    """What to generate: `prompt` holds one `<image>` per encoding passed with it."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def sampling(self) -> tuple[float, float, int | None]:
        return self.temperature, self.top_p, self.seed


@dataclass(frozen=True)
class _Request:
    """One request of a decode batch."""

    completion: Completion
    encoded: list[np.ndarray]  # its images' encodings, (N + K, D) each
    streaming: bool  # its text goes out as it comes; else in one piece when it ends


@dataclass
class _Outgoing:
    """A request in the running batch: the text it has not been sent yet."""

    request: _Request
    text: TextStream
    unsent: str = ""


@serve.deployment
class LLM:
    def __init__(self, settings: ServeSettings) -> None:
        self.model, self.tokenizer = load_served_model(settings, settings.llm)
        batch = settings.llm.batch
        self._batcher = JoiningBatcher(self._decode, batch.max_batch_size, batch.batch_wait_timeout_s)

    async def stream(self, completion: Completion, *encoded: np.ndarray) -> AsyncIterator[str]:
        """The completion's text, piece by piece; `encoded`: its images' encodings in prompt order.

        Raises:
            ClientError: the prompt and images do not fit the model (placeholders, context),
                checked here so that one bad request cannot fail the batch it would join.
        """
        async for piece in self._pieces(_Request(completion, list(encoded), streaming=True)):
            yield piece

    async def complete(self, completion: Completion, *encoded: np.ndarray) -> str:
        """The whole completion in one reply (raises as `stream` does)."""
        pieces = self._pieces(_Request(completion, list(encoded), streaming=False))
        return "".join([piece async for piece in pieces])

    async def _pieces(self, request: _Request) -> AsyncIterator[str]:
        prompt = request.completion.prompt
        if not prompt.strip():
            raise ClientError("the prompt is empty")
        ids = self.tokenizer(prompt).input_ids
        slots = ids.count(self.model.image_token_id)
        if slots != len(request.encoded):
            raise ClientError(f"the prompt has {slots} image slots but {len(request.encoded)} images")
        length = len(ids) + slots * (self.model.image_slots - 1)
        if length >= self.model.context_length:
            raise ClientError(
                f"the prompt takes {length} of the model's {self.model.context_length} positions "
                f"(each image takes {self.model.image_slots}); shorten it"
            )
        async for piece in self._batcher.submit(request):
            yield piece

    def _decode(self, admit: Admit[_Request]) -> AsyncIterator[Updates]:
        """Updates of the running batch's requests (see `_steps`), computed in a worker
        thread that does not wait for the event loop between them."""
        return iterate_ahead(self._steps(admit))

    def _steps(self, admit: Admit[_Request]) -> Iterator[Updates]:
        """The running batch, `STEP_WINDOW_S` of decode steps at a time: waiting requests
        join before each window, and after it come the updates of requests that ended or
        stream and have new text. A request that does not stream gets its text in one
        piece, so a batch of such requests wakes the event loop once per request, not per
        window. Returns when no request is left in the batch or waiting."""
        batch = RunningBatch(self.model, self.tokenizer)
        rows: dict[Hashable, _Outgoing] = {}
        while True:
            if joining := admit(len(batch)):
                self._join(batch, rows, joining)
            if not batch:
                return
            until = time.perf_counter() + STEP_WINDOW_S
            ended = []
            while batch:
                for key, (token, finished) in batch.step().items():
                    if token is not None:
                        rows[key].unsent += rows[key].text.add(token)
                    if finished:
                        ended.append(key)
                if time.perf_counter() >= until:
                    break
            updates: Updates = {key: (rows.pop(key).unsent, True) for key in ended}
            for key, row in rows.items():
                if row.request.streaming and row.unsent:
                    updates[key], row.unsent = (row.unsent, False), ""
            if updates:
                yield updates

    def _join(
        self, batch: RunningBatch, rows: dict[Hashable, _Outgoing], joining: list[tuple[Hashable, _Request]]
    ) -> None:
        keys = [key for key, _ in joining]
        completions = [request.completion for _, request in joining]
        ids, mask = encode_prompts(self.tokenizer, [completion.prompt for completion in completions])
        arrays = [array for _, request in joining for array in request.encoded]
        images = torch.from_numpy(np.stack(arrays)) if arrays else None
        settings = [
            GenerationSettings(
                max_new_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p, seed=c.seed
            )
            for c in completions
        ]
        batch.join(keys, ids, mask, images, settings)
        for key, request in joining:
            rows[key] = _Outgoing(request, TextStream(self.tokenizer))
