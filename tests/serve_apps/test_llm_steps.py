"""The LLM deployment's decode, in this process: a streaming request gets its text step
by step, one that does not gets it in one piece, and both get the same text; a request
that arrives while the batch runs joins it."""

from __future__ import annotations

import pytest
import torch

from p2med.serve_apps import models
from p2med.serve_apps.models import LLM, Completion, _Request
from p2med.serve_apps.settings import ServeSettings


@pytest.fixture
def llm(model_dir):
    threads = torch.get_num_threads()  # the deployment sets its replica's own
    yield LLM.func_or_class(ServeSettings(model=str(model_dir), api_keys=["k"], demo=False))
    torch.set_num_threads(threads)


class Arrivals:
    """`admit` for `_steps`: wave i of (key, job) comes at its i-th call; records what the
    batch held at each call."""

    def __init__(self, *waves: list[tuple[str, _Request]]) -> None:
        self.waves, self.held = list(waves), []

    def __call__(self, held: int) -> list[tuple[str, _Request]]:
        self.held.append(held)
        return self.waves.pop(0) if self.waves else []


def test_only_streaming_requests_get_their_text_before_they_end(llm, monkeypatch):
    monkeypatch.setattr(models, "STEP_WINDOW_S", 0.0)  # a window per decode step
    completion = Completion("Write the report.", max_tokens=12)
    arrivals = Arrivals(
        [("s", _Request(completion, [], streaming=True)), ("w", _Request(completion, [], streaming=False))]
    )

    updates = list(llm._steps(arrivals))

    streamed = [update["s"][0] for update in updates if "s" in update]
    whole = [update["w"][0] for update in updates if "w" in update]
    assert len(streamed) > 1
    assert whole == ["".join(streamed)]  # greedy rows of one batch: the same text
    assert updates[-1] == {"s": (streamed[-1], True), "w": (whole[0], True)}  # both end on the last step
    assert not any(finished for update in updates[:-1] for _, finished in update.values())


def test_a_request_arriving_during_the_batch_joins_it(llm, monkeypatch):
    monkeypatch.setattr(models, "STEP_WINDOW_S", 0.0)
    first = _Request(Completion("Write the report.", max_tokens=12), [], streaming=False)
    later = _Request(Completion("Impression:", max_tokens=4), [], streaming=False)
    arrivals = Arrivals([("first", first)], [], [("later", later)])

    updates = list(llm._steps(arrivals))

    ends = [key for update in updates for key, (_, finished) in update.items() if finished]
    assert ends == ["later", "first"]  # joined at the third step, ended before the first
    assert arrivals.held[:4] == [0, 1, 1, 2]
    alone = list(llm._steps(Arrivals([("later", later)])))
    assert alone[-1]["later"] == next(update["later"] for update in updates if "later" in update)
