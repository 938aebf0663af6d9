"""Batches of streaming requests, formed when the model is free.

Ray Serve's `@serve.batch` forms a batch within its wait of the first request even while
the previous batch still runs; that batch then queues for the model. Requests that
arrive during one long generation are thereby split into several small batches that run
one after another: with 16 clients the LLM's batches held 1-3 requests (bench/serve.py).
`FreeBatcher` forms the next batch only when the last one has finished, as inference
servers' dynamic batching does: it takes every request waiting by then, and a batch that
is not full waits for more until its first request has waited `wait_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")

# what a batch run yields per step, for each of its requests: (new text, finished)
Step = list[tuple[str, bool]]

_END = object()


@dataclass
class _Request(Generic[Item]):
    item: Item
    arrived: float = field(default_factory=time.monotonic)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # text, then _END or an exception
    finished: bool = False

    def finish(self, last: object = _END) -> None:
        if not self.finished:
            self.finished = True
            self.out.put_nowait(last)


class FreeBatcher(Generic[Item]):
    """Runs `run` on batches of up to `max_batch_size` requests, one batch at a time.

    `run(items)` is an async generator that yields a `Step` per step of the batch; each
    request's text streams to its caller as it comes, and its stream ends when its
    request is finished (or when `run` returns). An exception in `run` ends the stream of
    every request of the batch still running with that exception."""

    def __init__(
        self, run: Callable[[list[Item]], AsyncIterator[Step]], max_batch_size: int, wait_s: float
    ) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0; got {max_batch_size}, {wait_s}")
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self._queue: asyncio.Queue[_Request[Item]] | None = None
        self._loop_task: asyncio.Task | None = None  # held: asyncio keeps only weak references to tasks

    async def submit(self, item: Item) -> AsyncIterator[str]:
        """The text of `item`'s request, piece by piece."""
        request = _Request(item)
        self._waiting().put_nowait(request)
        while True:
            piece = await request.out.get()
            if piece is _END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def _waiting(self) -> asyncio.Queue[_Request[Item]]:
        # created on first use: a Serve replica's constructor runs before its event loop
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.get_running_loop().create_task(self._run_batches())
        return self._queue

    async def _run_batches(self) -> None:
        queue = self._waiting()
        while True:
            batch = [await queue.get()]
            deadline = batch[0].arrived + self.wait_s
            while len(batch) < self.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            await self._run_one(batch)

    async def _run_one(self, batch: list[_Request[Item]]) -> None:
        try:
            async for step in self.run([request.item for request in batch]):
                for request, (text, finished) in zip(batch, step, strict=True):
                    if request.finished:
                        continue
                    if text:
                        request.out.put_nowait(text)
                    if finished:
                        request.finish()
        except Exception as exc:  # the batch's requests fail with it; the next batch runs
            for request in batch:
                request.finish(exc)
        for request in batch:
            request.finish()
