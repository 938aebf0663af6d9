"""One running batch of streaming requests that new requests join between steps.

Ray Serve's `@serve.batch` forms a batch within its wait of the first request even while
the previous batch still runs; that batch then queues for the model, and requests that
arrive during one long generation are split into several small batches that run one after
another. Forming the next batch only when the last had finished still left the LLM's
batches alternating between nearly full and nearly empty under many clients (bench/serve.py;
docs/performance.md), the model idle while each group went back through the ingress and
the encoder. Here, as in inference servers' continuous batching, a request joins the
running batch at its next step; a batch starts when the first request has waited
`wait_s` (or the batch is full) and ends when no request is left in it or waiting. A
request whose caller stops listening (a client that disconnected, a timeout) leaves the
batch at its next step, or never joins it.

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


class Feed(Protocol[Item]):
    """Where a batch run takes its requests, from any thread (the LLM's decode thread)."""

    def admit(self, held: int) -> list[tuple[Hashable, Item]]:
        """(key, item) of requests to add to a batch that holds `held` requests."""
        ...

    def gone(self) -> list[Hashable]:
        """Keys of requests in the batch whose callers stopped listening since the last
        call: the run drops them."""
        ...


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
    gone: bool = False  # its caller stopped listening

    def finish(self, last: object = _END) -> None:
        if not self.finished:
            self.finished = True
            self.out.put_nowait(last)


class JoiningBatcher(Generic[Item]):
    """Runs `run(feed)`, one batch at a time, while requests are waiting or running.

    `run` is an async generator that takes requests with `feed.admit` at most
    `max_batch_size` at once, drops those `feed.gone` names, and yields `Updates` keyed by
    the keys `admit` gave; each request's text streams to its caller as it comes, and its
    stream ends when it is finished (or when `run` returns). An exception in `run` ends the
    stream of every request it had admitted and not finished with that exception. `clock`
    is where it reads the time (tests pass one they move)."""

    def __init__(
        self,
        run: Callable[[Feed[Item]], AsyncIterator[Updates]],
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
        self._gone: collections.deque[_Request[Item]] = collections.deque()  # likewise
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None  # held: asyncio keeps only weak references to tasks

    async def submit(self, item: Item) -> AsyncIterator[str]:
        """The text of `item`'s request, piece by piece."""
        request = _Request(item, arrived=self.clock.now())
        self._waiting.append(request)
        self._wake()
        try:
            while True:
                piece = await request.out.get()
                if piece is _END:
                    return
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            if not request.finished:  # the caller stopped listening: cancelled, or closed this
                request.gone = True
                self._gone.append(request)

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
        feed = _BatchFeed(self._waiting, self._gone, self.max_batch_size)
        try:
            async for updates in self.run(feed):
                for request, (text, finished) in updates.items():
                    if request.finished:
                        continue
                    if text:
                        request.out.put_nowait(text)
                    if finished:
                        request.finish()
        except Exception as exc:  # the batch's requests fail with it; the next batch runs
            for request in feed.admitted:
                request.finish(exc)
        for request in feed.admitted:
            request.finish()


class _BatchFeed(Generic[Item]):
    """The `Feed` of one batch run: the batcher's waiting requests, and those of its own
    whose callers left."""

    def __init__(self, waiting: collections.deque, gone: collections.deque, max_batch_size: int) -> None:
        self.waiting, self.left, self.max_batch_size = waiting, gone, max_batch_size
        self.admitted: list[_Request[Item]] = []

    def admit(self, held: int) -> list[tuple[Hashable, Item]]:
        taken: list[_Request[Item]] = []
        while len(taken) < self.max_batch_size - held and self.waiting:
            request = self.waiting.popleft()
            if not request.gone:
                taken.append(request)
        self.admitted.extend(taken)
        return [(request, request.item) for request in taken]

    def gone(self) -> list[Hashable]:
        dropped = []
        while self.left:
            request = self.left.popleft()
            if request in self.admitted:
                dropped.append(request)
        return dropped
