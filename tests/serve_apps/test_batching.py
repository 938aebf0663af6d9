"""JoiningBatcher on its own: when batches start, when requests join them, what each
request receives, and failures.

Each test's `run` has the shape the LLM's `_decode` has: a generator in a worker thread
(`iterate_ahead`) that admits requests before each step, and writes, for each item (a
word and a length), the word that many times, one per step. It records who was in the
batch at each step."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from p2med.serve_apps.background import iterate_ahead
from p2med.serve_apps.batching import JoiningBatcher


class Recorder:
    """A batch function writing item (word, n) as n steps of `word`; records each batch's
    steps (the words decoding at each) and the threads that called `admit`."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.batches: list[list[list[str]]] = []
        self.step_s = step_s
        self.admitting_threads: set[int] = set()

    def run(self, admit):
        return iterate_ahead(self._steps(admit))

    def _steps(self, admit):
        steps: list[list[str]] = []
        self.batches.append(steps)
        rows: dict[object, list] = {}  # key -> [word, steps left]
        while True:
            self.admitting_threads.add(threading.get_ident())
            for key, (word, n) in admit(len(rows)):
                rows[key] = [word, n]
            if not rows:
                return
            time.sleep(self.step_s)
            steps.append([word for word, _ in rows.values()])
            updates = {}
            for key, row in list(rows.items()):
                row[1] -= 1
                updates[key] = (row[0], row[1] == 0)
                if row[1] == 0:
                    del rows[key]
            yield updates


async def _text(batcher: JoiningBatcher, item) -> str:
    return "".join([piece async for piece in batcher.submit(item)])


def test_requests_arriving_during_a_batch_join_it_at_its_next_step():
    async def scenario():
        recorder = Recorder(step_s=0.02)
        batcher = JoiningBatcher(recorder.run, max_batch_size=16, wait_s=0.0)
        first = asyncio.create_task(_text(batcher, ("a", 10)))
        await asyncio.sleep(0.07)  # a few steps of the batch
        later = asyncio.create_task(_text(batcher, ("b", 2)))
        return await asyncio.gather(first, later), recorder

    texts, recorder = asyncio.run(scenario())
    assert texts == ["a" * 10, "bb"]
    [steps] = recorder.batches  # one batch
    assert steps[0] == ["a"] and ["a", "b"] in steps and steps[-1] == ["a"]
    assert threading.main_thread().ident not in recorder.admitting_threads  # admitted from the decode thread


def test_a_batch_that_is_not_full_starts_when_its_first_request_waited_wait_s():
    async def scenario():
        recorder = Recorder()
        batcher = JoiningBatcher(recorder.run, max_batch_size=4, wait_s=0.2)
        first = asyncio.create_task(_text(batcher, ("a", 1)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(_text(batcher, ("b", 1)))
        await asyncio.gather(first, second)
        await asyncio.sleep(0.3)  # past the wait: the next request runs alone
        await _text(batcher, ("c", 1))
        return recorder.batches

    assert asyncio.run(scenario()) == [[["a", "b"]], [["c"]]]


def test_a_batch_holds_at_most_max_batch_size_requests_and_the_rest_join_as_they_leave():
    async def scenario():
        recorder = Recorder()
        batcher = JoiningBatcher(recorder.run, max_batch_size=2, wait_s=0.0)
        items = [("a", 1), ("b", 3), ("c", 1), ("d", 1)]
        texts = await asyncio.gather(*[_text(batcher, item) for item in items])
        return texts, recorder.batches

    texts, batches = asyncio.run(scenario())
    assert texts == ["a", "bbb", "c", "d"]
    assert batches == [[["a", "b"], ["b", "c"], ["b", "d"]]]


def test_a_request_that_finishes_early_is_answered_before_its_batch_ends():
    async def scenario():
        recorder = Recorder(step_s=0.02)
        batcher = JoiningBatcher(recorder.run, max_batch_size=4, wait_s=0.01)
        short = asyncio.create_task(_text(batcher, ("s", 1)))
        long = asyncio.create_task(_text(batcher, ("l", 20)))
        text = await short
        return text, long.done(), await long

    assert asyncio.run(scenario()) == ("s", False, "l" * 20)


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    async def run(admit):
        admitted = admit(0)
        if any(word == "bad" for _, (word, _) in admitted):
            raise RuntimeError("the model failed")
        yield {key: (word, True) for key, (word, _) in admitted}

    async def scenario():
        batcher = JoiningBatcher(run, max_batch_size=4, wait_s=0.05)
        failed = await asyncio.gather(
            _text(batcher, ("bad", 1)), _text(batcher, ("ok", 1)), return_exceptions=True
        )
        return failed, await _text(batcher, ("next", 1))

    failed, after = asyncio.run(scenario())
    assert [str(result) for result in failed] == ["the model failed", "the model failed"]
    assert after == "next"


@pytest.mark.parametrize(("size", "wait"), [(0, 0.01), (4, -1.0)])
def test_refuses_impossible_settings(size, wait):
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        JoiningBatcher(Recorder().run, size, wait)
