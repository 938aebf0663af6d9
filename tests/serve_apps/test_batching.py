"""FreeBatcher on its own: when batches form, what each request receives, and failures.

Each test's `run` is a batch function of the shape the LLM's `_decode` has: it records
the batches it is given and writes, for each item (a word and a length), the word that
many times, one per step."""

from __future__ import annotations

import asyncio

import pytest

from p2med.serve_apps.batching import FreeBatcher


class Recorder:
    """A batch function that writes item (word, n) as n steps of `word`, and records its batches."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.step_s = step_s
        self.release = asyncio.Event()  # the first batch waits for it
        self.release.set()

    async def run(self, items: list[tuple[str, int]]):
        self.batches.append([word for word, _ in items])
        await self.release.wait()
        for step in range(max(n for _, n in items)):
            await asyncio.sleep(self.step_s)
            yield [(word if step < n else "", step >= n - 1) for word, n in items]


async def _text(batcher: FreeBatcher, item) -> str:
    return "".join([piece async for piece in batcher.submit(item)])


def test_requests_arriving_during_a_batch_form_one_next_batch():
    async def scenario():
        recorder = Recorder()
        recorder.release.clear()
        batcher = FreeBatcher(recorder.run, max_batch_size=16, wait_s=0.01)
        first = asyncio.create_task(_text(batcher, ("a", 1)))
        later = []
        for word in "bcde":  # 20 ms apart: @serve.batch's 10 ms wait would batch them one by one
            await asyncio.sleep(0.02)
            later.append(asyncio.create_task(_text(batcher, (word, 2))))
        recorder.release.set()
        texts = await asyncio.gather(first, *later)
        return recorder.batches, texts

    batches, texts = asyncio.run(scenario())
    assert batches == [["a"], ["b", "c", "d", "e"]]
    assert texts == ["a", "bb", "cc", "dd", "ee"]


def test_a_batch_that_is_not_full_waits_for_more_until_its_first_request_waited_wait_s():
    async def scenario():
        recorder = Recorder()
        batcher = FreeBatcher(recorder.run, max_batch_size=4, wait_s=0.2)
        first = asyncio.create_task(_text(batcher, ("a", 1)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(_text(batcher, ("b", 1)))
        await asyncio.gather(first, second)
        await asyncio.sleep(0.3)  # past the wait: the next request runs alone
        await _text(batcher, ("c", 1))
        return recorder.batches

    assert asyncio.run(scenario()) == [["a", "b"], ["c"]]


def test_batches_hold_at_most_max_batch_size_requests():
    async def scenario():
        recorder = Recorder()
        recorder.release.clear()
        batcher = FreeBatcher(recorder.run, max_batch_size=2, wait_s=0.0)
        tasks = [asyncio.create_task(_text(batcher, (word, 1))) for word in "abcdef"]
        await asyncio.sleep(0.05)
        recorder.release.set()
        await asyncio.gather(*tasks)
        return recorder.batches

    batches = asyncio.run(scenario())
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [word for batch in batches for word in batch] == list("abcdef")


def test_a_request_that_finishes_early_is_answered_before_its_batch_ends():
    async def scenario():
        recorder = Recorder(step_s=0.02)
        batcher = FreeBatcher(recorder.run, max_batch_size=4, wait_s=0.01)
        short = asyncio.create_task(_text(batcher, ("s", 1)))
        long = asyncio.create_task(_text(batcher, ("l", 20)))
        text = await short
        return text, long.done(), await long, recorder.batches

    text, long_done, long_text, batches = asyncio.run(scenario())
    assert batches == [["s", "l"]]
    assert (text, long_done, long_text) == ("s", False, "l" * 20)


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    async def run(items):
        if any(word == "bad" for word, _ in items):
            raise RuntimeError("the model failed")
        yield [(word, True) for word, _ in items]

    async def scenario():
        batcher = FreeBatcher(run, max_batch_size=4, wait_s=0.05)
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
        FreeBatcher(Recorder().run, size, wait)
