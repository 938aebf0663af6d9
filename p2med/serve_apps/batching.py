"""One running batch of streaming requests that new requests join between steps.

Ray Serve's `@serve.batch` forms a batch within its wait of the first request even while
the previous batch still runs; that batch then queues for the model, and requests that
arrive during one long generation are split into several small batches that run one after
another. Forming the next batch only when the last had finished still left the LLM's
batches alternating between nearly full and nearly empty under many clients (bench/serve.py;
docs/performance.md), the model idle while each group went back through the ingress and
the encoder. Here, as in inference servers' continuous batching, a request joins the
running batch at its next step; a batch starts when the first request has waited
`wait_s` (or the batch is full) and ends when no request is left in it or waiting.

The batcher reads time through a `Clock` (the monotonic clock and asyncio's timeouts by
default), so its tests can move time by hand instead of sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item")

# what a batch run yields per step: for some of its requests, (new text, finished)
Updates = dict[Hashable, tuple[str, bool]]
# admit(held): (key, item) of requests to add to a batch that holds `held` requests
Admit = Callable[[int], list[tuple[Hashable, Item]]]

_END = object()


class Clock(Protocol):
    """Where the batcher reads the time and waits."""

    def now(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Returns when `event` is set or `timeout` seconds have passed, whichever is first."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic` and asyncio's timeouts."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        # asyncio.TimeoutError: not yet the builtin TimeoutError on Python 3.10
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass(eq=False)  # a request is its own key in `Updates`
class _Request(Generic[Item]):
    item: Item
    arrived: float
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # text, then _END or an exception
    finished: bool = False

    def finish(self, last: object = _END) -> None:
        if not self.finished:
            self.finished = True
            self.out.put_nowait(last)


class JoiningBatcher(Generic[Item]):
    """Runs `run(admit)`, one batch at a time, while requests are waiting or running.

    `run` is an async generator that takes requests with `admit` (from any thread: the
    LLM calls it from its decode thread) at most `max_batch_size` at once, and yields
    `Updates` keyed by the keys `admit` gave; each request's text streams to its caller
    as it comes, and its stream ends when it is finished (or when `run` returns). An
    exception in `run` ends the stream of every request it had admitted and not finished
    with that exception. `clock` is where it reads the time (tests pass one they move)."""

    def __init__(
        self,
        run: Callable[[Admit[Item]], AsyncIterator[Updates]],
        max_batch_size: int,
        wait_s: float,
        clock: Clock | None = None,
    ) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0; got {max_batch_size}, {wait_s}")
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self.clock: Clock = clock or MonotonicClock()
        # appended on the event loop, taken by `admit` in the decode thread: deque's
        # append and popleft are atomic
        self._waiting: collections.deque[_Request[Item]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None  # held: asyncio keeps only weak references to tasks

    async def submit(self, item: Item) -> AsyncIterator[str]:
        """The text of `item`'s request, piece by piece."""
        request = _Request(item, arrived=self.clock.now())
        self._waiting.append(request)
        self._wake()
        while True:
            piece = await request.out.get()
            if piece is _END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def _wake(self) -> None:
        # created on first use: a Serve replica's constructor runs before its event loop
        if self._arrived is None:
            self._arrived = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run_batches())
        self._arrived.set()

    async def _run_batches(self) -> None:
        assert self._arrived is not None
        while True:
            self._arrived.clear()
            if not self._waiting:
                await self._arrived.wait()
                continue
            deadline = self._waiting[0].arrived + self.wait_s
            while len(self._waiting) < self.max_batch_size and (left := deadline - self.clock.now()) > 0:
                self._arrived.clear()
                await self.clock.wait(self._arrived, left)
            await self._run_one()

    async def _run_one(self) -> None:
        admitted: list[_Request[Item]] = []

        def admit(held: int) -> list[tuple[Hashable, Item]]:
            taken = []
            while len(taken) < self.max_batch_size - held and self._waiting:
                taken.append(self._waiting.popleft())
            admitted.extend(taken)
            return [(request, request.item) for request in taken]

        try:
            async for updates in self.run(admit):
                for request, (text, finished) in updates.items():
                    if request.finished:
                        continue
                    if text:
                        request.out.put_nowait(text)
                    if finished:
                        request.finish()
        except Exception as exc:  # the batch's requests fail with it; the next batch runs
            for request in admitted:
                request.finish(exc)
        for request in admitted:
            request.finish()
