"""JoiningBatcher on its own: when batches start, when requests join them, what each
request receives, and failures.

Each test's `run` has the shape the LLM's `_decode` has: a generator in a worker thread
(`iterate_ahead`) that admits requests before each step, and writes, for each item (a
word and a length), the word that many times, one per step. It records who was in the
batch at each step. Nothing here sleeps: time is a `ManualClock` the test moves, and a
gated `Recorder` takes a step only when the test allows it, so every assertion is about
order, never about how fast this machine is. `GUARD_S` only ends a test whose behaviour
broke so that it would wait forever.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from p2med.serve_apps.background import iterate_ahead
from p2med.serve_apps.batching import JoiningBatcher

T = TypeVar("T")
GUARD_S = 60.0


async def guarded(awaitable: Awaitable[T], what: str) -> T:
    """`awaitable`'s result; a test failure naming `what` if it never comes."""
    try:
        return await asyncio.wait_for(awaitable, GUARD_S)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} did not happen (waited {GUARD_S:.0f} s)")


class ManualClock:
    """A `batching.Clock` whose time moves only when the test calls `advance`; records the
    deadline of each wait the batcher starts."""

    def __init__(self) -> None:
        self.time = 0.0
        self.deadlines: list[float] = []
        self._alarms: list[tuple[float, asyncio.Future]] = []
        self._waited = asyncio.Event()

    def now(self) -> float:
        return self.time

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        alarm = (self.time + timeout, asyncio.get_running_loop().create_future())
        self.deadlines.append(alarm[0])
        self._alarms.append(alarm)
        self._waited.set()
        arrival = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([arrival, alarm[1]], return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
            self._alarms.remove(alarm)

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, future in self._alarms:
            if deadline <= self.time and not future.done():
                future.set_result(None)

    async def until_waits(self, count: int) -> None:
        """Returns once the batcher has started `count` waits in all."""
        while len(self.deadlines) < count:
            self._waited.clear()
            await self._waited.wait()


class Recorder:
    """A batch function writing item (word, n) as n steps of `word`; records each batch's
    steps (the words decoding at each) and the threads that called `admit`. A gated
    recorder admits and takes each step only once `allow` has let it."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[list[list[str]]] = []
        self.admitting_threads: set[int] = set()
        self._gate = threading.Semaphore(0) if gated else None
        self._ended = threading.Condition()
        self._ended_batches = 0

    def ended(self, batches: int) -> bool:
        """Blocks until `batches` batches have ended (no request left to admit); whether they have."""
        with self._ended:
            return self._ended.wait_for(lambda: self._ended_batches >= batches, timeout=GUARD_S)

    def allow(self, steps: int) -> None:
        assert self._gate is not None
        self._gate.release(steps)

    def run(self, feed):
        return iterate_ahead(self._steps(feed))

    def _steps(self, feed):
        steps: list[list[str]] = []
        self.batches.append(steps)
        rows: dict[object, list] = {}  # key -> [word, steps left]
        while True:
            if self._gate is not None and not self._gate.acquire(timeout=GUARD_S):
                raise RuntimeError("the test never allowed the next step")
            self.admitting_threads.add(threading.get_ident())
            for key in feed.gone():
                del rows[key]
            for key, (word, n) in feed.admit(len(rows)):
                rows[key] = [word, n]
            if not rows:
                with self._ended:
                    self._ended_batches += 1
                    self._ended.notify_all()
                return
            steps.append([word for word, _ in rows.values()])
            updates = {}
            for key, row in list(rows.items()):
                row[1] -= 1
                updates[key] = (row[0], row[1] == 0)
                if row[1] == 0:
                    del rows[key]
            yield updates


async def _text(batcher: JoiningBatcher, item) -> str:
    return "".join(await _collect(batcher.submit(item)))


async def _collect(stream) -> list[str]:
    return [piece async for piece in stream]


def test_requests_arriving_during_a_batch_join_it_at_its_next_step():
    async def scenario():
        recorder = Recorder(gated=True)
        batcher = JoiningBatcher(recorder.run, max_batch_size=16, wait_s=0.0)
        first = batcher.submit(("a", 10))
        recorder.allow(3)
        start = [await guarded(anext(first), f"step {i} of the batch") for i in (1, 2, 3)]
        later = asyncio.create_task(_text(batcher, ("b", 2)))
        await asyncio.sleep(0)  # `later` runs up to its first wait: "b" is waiting
        recorder.allow(100)
        rest = await guarded(_collect(first), "the end of the batch")
        return "".join(start + rest), await guarded(later, "b's answer"), recorder

    first, later, recorder = asyncio.run(scenario())
    assert (first, later) == ("a" * 10, "bb")
    [steps] = recorder.batches  # one batch, joined at the step after "b" came
    assert steps == [["a"]] * 3 + [["a", "b"]] * 2 + [["a"]] * 5
    assert threading.main_thread().ident not in recorder.admitting_threads  # admitted from the decode thread


def test_a_batch_that_is_not_full_starts_when_its_first_request_waited_wait_s():
    async def scenario():
        clock, recorder = ManualClock(), Recorder()
        batcher = JoiningBatcher(recorder.run, max_batch_size=4, wait_s=2.0, clock=clock)
        first = asyncio.create_task(_text(batcher, ("a", 1)))
        await guarded(clock.until_waits(1), "a wait for the batch's first request")
        clock.advance(1.0)
        second = asyncio.create_task(_text(batcher, ("b", 1)))
        await guarded(clock.until_waits(2), "a wait for the rest of a's wait after b came")
        before_the_wait_ended = [list(batch) for batch in recorder.batches]
        clock.advance(1.0)
        texts = await guarded(asyncio.gather(first, second), "the first batch")
        assert await asyncio.to_thread(recorder.ended, 1)  # else c would join the running batch
        clock.advance(3.0)  # a request after the batch ended runs alone, after its own wait
        third = asyncio.create_task(_text(batcher, ("c", 1)))
        await guarded(clock.until_waits(3), "a wait for c")
        batches_while_c_waits = len(recorder.batches)
        clock.advance(2.0)
        texts.append(await guarded(third, "c's batch"))
        return texts, clock.deadlines, before_the_wait_ended, batches_while_c_waits, recorder.batches

    texts, deadlines, before_the_wait_ended, batches_while_c_waits, batches = asyncio.run(scenario())
    assert texts == ["a", "b", "c"]
    assert deadlines == [2.0, 2.0, 7.0]  # a's arrival + wait_s (twice: b woke it), then c's
    assert before_the_wait_ended == [] and batches_while_c_waits == 1
    assert batches == [[["a", "b"]], [["c"]]]


def test_a_batch_holds_at_most_max_batch_size_requests_and_the_rest_join_as_they_leave():
    async def scenario():
        clock, recorder = ManualClock(), Recorder()
        batcher = JoiningBatcher(recorder.run, max_batch_size=2, wait_s=10.0, clock=clock)
        items = [("a", 1), ("b", 3), ("c", 1), ("d", 1)]
        texts = await guarded(asyncio.gather(*[_text(batcher, item) for item in items]), "the batch")
        return texts, clock.deadlines, recorder.batches

    texts, deadlines, batches = asyncio.run(scenario())
    assert texts == ["a", "bbb", "c", "d"]
    assert deadlines == []  # a full batch starts without waiting (the clock never moved)
    assert batches == [[["a", "b"], ["b", "c"], ["b", "d"]]]


def test_a_request_that_finishes_early_is_answered_before_its_batch_ends():
    async def scenario():
        recorder = Recorder(gated=True)
        batcher = JoiningBatcher(recorder.run, max_batch_size=2, wait_s=10.0, clock=ManualClock())
        short = asyncio.create_task(_text(batcher, ("s", 1)))
        long = asyncio.create_task(_text(batcher, ("l", 20)))
        recorder.allow(1)  # the batch's first step only
        text = await guarded(short, "the short request's answer after one step")
        long_done = long.done()
        recorder.allow(100)
        return text, long_done, await guarded(long, "the long request's answer")

    assert asyncio.run(scenario()) == ("s", False, "l" * 20)


def test_a_request_whose_caller_stops_listening_leaves_at_the_next_step_or_never_joins():
    """A client that disconnects (its request cancelled) or a caller that closes the stream."""

    async def scenario():
        recorder = Recorder(gated=True)
        batcher = JoiningBatcher(recorder.run, max_batch_size=2, wait_s=10.0, clock=ManualClock())
        left, stayed = batcher.submit(("a", 10)), asyncio.create_task(_text(batcher, ("b", 10)))
        recorder.allow(2)
        [await guarded(anext(left), f"a's step {i}") for i in (1, 2)]
        await left.aclose()  # gone while in the batch
        waiting = asyncio.create_task(_text(batcher, ("c", 1)))  # the batch is full: c waits
        await asyncio.sleep(0)
        waiting.cancel()  # gone before it joined
        with pytest.raises(asyncio.CancelledError):
            await waiting
        recorder.allow(100)
        return await guarded(stayed, "b's answer"), recorder

    text, recorder = asyncio.run(scenario())
    assert text == "b" * 10
    assert recorder.batches == [[["b", "a"]] * 2 + [["b"]] * 8]  # a left after two steps; c never came


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    async def run(feed):
        admitted = feed.admit(0)
        if any(word == "bad" for _, (word, _) in admitted):
            raise RuntimeError("the model failed")
        yield {key: (word, True) for key, (word, _) in admitted}

    async def scenario():
        batcher = JoiningBatcher(run, max_batch_size=2, wait_s=0.0, clock=ManualClock())
        failed = await guarded(
            asyncio.gather(_text(batcher, ("bad", 1)), _text(batcher, ("ok", 1)), return_exceptions=True),
            "the failing batch",
        )
        return failed, await guarded(_text(batcher, ("next", 1)), "the next batch")

    failed, after = asyncio.run(scenario())
    assert [str(result) for result in failed] == ["the model failed", "the model failed"]
    assert after == "next"


@pytest.mark.parametrize(("size", "wait"), [(0, 0.01), (4, -1.0)])
def test_refuses_impossible_settings(size, wait):
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        JoiningBatcher(Recorder().run, size, wait)
