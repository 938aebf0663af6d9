"""The LLM deployment's decode, in this process: a streaming request gets its text step
by step, one that does not gets it in one piece, and both get the same text."""

from __future__ import annotations

import pytest
import torch

from p2med.serve_apps import models
from p2med.serve_apps.models import LLM, Completion, _Job
from p2med.serve_apps.settings import ServeSettings


@pytest.fixture
def llm(model_dir):
    threads = torch.get_num_threads()  # the deployment sets its replica's own
    yield LLM.func_or_class(ServeSettings(model=str(model_dir), api_keys=["k"], demo=False))
    torch.set_num_threads(threads)


def test_only_streaming_requests_get_their_text_before_they_end(llm, monkeypatch):
    monkeypatch.setattr(models, "STEP_WINDOW_S", 0.0)  # a window per decode step
    completion = Completion("Write the report.", max_tokens=12)
    batch = [_Job(completion, [], streaming=True), _Job(completion, [], streaming=False)]

    steps = list(llm._steps(batch))

    streamed = [text for (text, _), _ in steps if text]
    whole = [text for _, (text, _) in steps if text]
    assert len(streamed) > 1
    assert whole == ["".join(streamed)]  # greedy rows of one batch: the same text
    assert steps[-1][0][1] and steps[-1][1][1]  # the last step ends both
    assert not any(finished for _, (_, finished) in steps[:-1])
