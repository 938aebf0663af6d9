"""The LLM deployment's decode (`compute.Decoding`), in this process: a streaming request gets its text step
by step, one that does not gets it in one piece, and both get the same text; a request
that arrives while the batch runs joins it; one whose caller left drops out."""

from __future__ import annotations

import pytest

from p2med.model.checkpoint import load_model
from p2med.serve_apps.compute import Completion, Decoding, Request


@pytest.fixture
def decoding(model_dir) -> Decoding:
    """A window per decode step."""
    return Decoding(*load_model(str(model_dir), merge=True), window_s=0.0)


class Arrivals:
    """The `Feed` of `Decoding.steps`: wave i of (key, job) comes at its i-th admit, and
    the keys of `leaving[n]` go once n admits have been made; records what the batch held
    at each admit."""

    def __init__(self, *waves: list[tuple[str, Request]], leaving: dict[int, list[str]] | None = None):
        self.waves, self.leaving, self.held = list(waves), leaving or {}, []

    def admit(self, held: int) -> list[tuple[str, Request]]:
        self.held.append(held)
        return self.waves.pop(0) if self.waves else []

    def gone(self) -> list[str]:
        return self.leaving.get(len(self.held), [])


def test_only_streaming_requests_get_their_text_before_they_end(decoding):
    completion = Completion("Write the report.", max_tokens=12)
    arrivals = Arrivals(
        [("s", Request(completion, [], streaming=True)), ("w", Request(completion, [], streaming=False))]
    )

    updates = list(decoding.steps(arrivals))

    streamed = [update["s"][0] for update in updates if "s" in update]
    whole = [update["w"][0] for update in updates if "w" in update]
    assert len(streamed) > 1
    assert whole == ["".join(streamed)]  # greedy rows of one batch: the same text
    assert updates[-1] == {"s": (streamed[-1], True), "w": (whole[0], True)}  # both end on the last step
    assert not any(finished for update in updates[:-1] for _, finished in update.values())


def test_a_request_arriving_during_the_batch_joins_it(decoding):
    first = Request(Completion("Write the report.", max_tokens=12), [], streaming=False)
    later = Request(Completion("Impression:", max_tokens=4), [], streaming=False)
    arrivals = Arrivals([("first", first)], [], [("later", later)])

    updates = list(decoding.steps(arrivals))

    ends = [key for update in updates for key, (_, finished) in update.items() if finished]
    assert ends == ["later", "first"]  # joined at the third step, ended before the first
    assert arrivals.held[:4] == [0, 1, 1, 2]
    alone = list(decoding.steps(Arrivals([("later", later)])))
    assert alone[-1]["later"] == next(update["later"] for update in updates if "later" in update)


def test_a_request_whose_caller_left_drops_out_at_the_next_step(decoding):
    staying = Request(Completion("Write the report.", max_tokens=12), [], streaming=True)
    leaving = Request(Completion("Write the report.", max_tokens=12), [], streaming=True)
    arrivals = Arrivals([("staying", staying), ("leaving", leaving)], leaving={3: ["leaving"]})

    updates = list(decoding.steps(arrivals))

    steps_with = [i for i, update in enumerate(updates) if "leaving" in update]
    assert steps_with == [0, 1, 2] and not any(finished for _, finished in updates[2].values())
    assert arrivals.held[:4] == [0, 2, 2, 1]  # two rows, then one after the third admit
    assert updates[-1]["staying"][1]  # the other row goes on to its end
    alone = "".join(update["staying"][0] for update in decoding.steps(Arrivals([("staying", staying)])))
    assert "".join(update["staying"][0] for update in updates if "staying" in update) == alone
