"""What the two model deployments compute, free of Ray and of the HTTP layer: the
deployments in `models` call these, and `bench/gpu_check.py` runs them on a bare GPU.

- `ImageEncoding`: decoded images of either kind -> what the LLM reads for each, (N + K, D).
- `Decoding`: the running batch's decode steps, which requests join between steps.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from p2med.model.generation import GenerationSettings, RunningBatch, TextStream, encode_prompts
from p2med.model.interleave import MODALITIES, Images
from p2med.model.mllm import P2MedModel
from p2med.serve_apps.batching import Feed, Updates
from p2med.serve_apps.errors import ClientError


class ImageEncoding:
    """Decoded images -> their encodings, one forward pass per kind."""

    def __init__(self, model: P2MedModel) -> None:
        self.model = model

    @torch.inference_mode()
    def encode(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """X-rays (S, S) and CTs (D, H, W), float32 in [0, 1], in any mix -> (N + K, D) float32 each."""
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
class Request:
    """One request of a decode batch."""

    completion: Completion
    encoded: list[np.ndarray]  # its images' encodings, (N + K, D) each
    streaming: bool  # its text goes out as it comes; else in one piece when it ends


@dataclass
class _Outgoing:
    """A request in the running batch: the text it has not been sent yet."""

    request: Request
    text: TextStream
    unsent: str = ""


class Decoding:
    """The decode of one LLM replica: a request is checked against the model, then runs in
    the running batch with the KV cache, each stopping at its own length."""

    def __init__(self, model: P2MedModel, tokenizer, window_s: float = STEP_WINDOW_S) -> None:
        self.model, self.tokenizer, self.window_s = model, tokenizer, window_s

    def check(self, prompt: str, images: int) -> None:
        """Raises ClientError when the prompt and its `images` do not fit the model
        (placeholders, context): one bad request must not fail the batch it would join."""
        if not prompt.strip():
            raise ClientError("the prompt is empty")
        ids = self.tokenizer(prompt).input_ids
        slots = ids.count(self.model.image_token_id)
        if slots != images:
            raise ClientError(f"the prompt has {slots} image slots but {images} images")
        length = len(ids) + slots * (self.model.image_slots - 1)
        if length >= self.model.context_length:
            raise ClientError(
                f"the prompt takes {length} of the model's {self.model.context_length} positions "
                f"(each image takes {self.model.image_slots}); shorten it"
            )

    def steps(self, feed: Feed[Request]) -> Iterator[Updates]:
        """The running batch, `window_s` of decode steps at a time: before each window,
        requests whose callers left drop out and waiting ones join; after it come the
        updates of requests that ended or stream and have new text. A request that does not
        stream gets its text in one piece, so a batch of such requests wakes the event loop
        once per request, not per window. Returns when no request is left in the batch or
        waiting."""
        batch = RunningBatch(self.model, self.tokenizer)
        rows: dict[Hashable, _Outgoing] = {}
        while True:
            if gone := [key for key in feed.gone() if rows.pop(key, None) is not None]:
                batch.leave(gone)
            if joining := feed.admit(len(batch)):
                self._join(batch, rows, joining)
            if not batch:
                return
            until = time.perf_counter() + self.window_s
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
        self, batch: RunningBatch, rows: dict[Hashable, _Outgoing], joining: list[tuple[Hashable, Request]]
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
