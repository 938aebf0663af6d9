"""The API's request handling that needs no running app: a chat's messages become the
uploads and the text the model gets; data URIs are checked; failures of the deployments
become the JSON errors the API answers (400, or 503 with Retry-After); streamed text
becomes OpenAI's chunk events. Over HTTP on a local Ray Serve: test_api.py."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from p2med.serve_apps.api import ApiError, Message, _as_api_error, _chat_inputs, _sse
from p2med.serve_apps.errors import ClientError
from p2med.serve_apps.settings import ServeSettings
from tests.serve_apps.test_uploads import LIMIT, picture

MAX_IMAGES = ServeSettings(model="unused").max_images


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_a_chat_gives_its_images_in_order_and_its_user_text():
    first, second = picture("L", "PNG"), picture("RGB", "JPEG")
    messages = [
        Message(role="system", content="You write radiology reports."),
        Message(
            role="user", content=[image(data_uri(first)), {"type": "text", "text": " Write the report. "}]
        ),
        Message(role="assistant", content="An earlier answer, not input."),
        Message(role="user", content=[image(data_uri(second, "image/jpeg"))]),
    ]
    uploads, text = _chat_inputs(messages, [], LIMIT, MAX_IMAGES)
    assert uploads == [[first], [second]]
    assert text == "You write radiology reports.\nWrite the report."


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.org/xray.png", "must be a base64 data URI"),
        ("data:image/png,notbase64", "must be a base64 data URI"),
        ("data:image/gif;base64,R0lGOD", "image type 'image/gif' is not accepted"),
        ("data:image/png;base64,@@@", "invalid base64"),
        (data_uri(b"not a picture"), "not an image"),  # base64 of no image: the upload check says so
    ],
)
def test_images_that_are_not_accepted_are_refused_with_400(url, message):
    chat = [Message(role="user", content=[image(url), {"type": "text", "text": "Write the report."}])]
    with pytest.raises(ApiError, match=message) as refused:
        _chat_inputs(chat, [], LIMIT, MAX_IMAGES)
    assert refused.value.status == 400


def test_images_decoding_past_the_limit_together_are_refused_with_400():
    each = data_uri(picture("L", "PNG", size=(300, 300)))  # 90,000 bytes of pixels
    chat = [Message(role="user", content=[image(each), image(each), {"type": "text", "text": "Compare."}])]
    assert len(_chat_inputs(chat, [], 200_000, MAX_IMAGES)[0]) == 2
    with pytest.raises(ApiError, match="decodes to 180,000 bytes together; the limit is 100,000") as refused:
        _chat_inputs(chat, [], 100_000, MAX_IMAGES)
    assert refused.value.status == 400


def test_a_chat_without_text_is_refused():
    with pytest.raises(ApiError, match="hold no text") as refused:
        only_an_image = [Message(role="user", content=[image(data_uri(picture("L", "PNG")))])]
        _chat_inputs(only_an_image, [], LIMIT, MAX_IMAGES)
    assert refused.value.status == 400


def test_deployment_failures_become_the_apis_answers_through_their_wrappers():
    def raised_from(cause: BaseException) -> Exception:
        try:
            raise RuntimeError("from the chain") from cause
        except RuntimeError as wrapper:
            return wrapper

    busy = _as_api_error(raised_from(BackPressureError(num_queued_requests=3, max_queued_requests=2)))
    assert (busy.status, busy.kind, busy.headers) == (503, "overloaded", {"Retry-After": "1"})
    gone = _as_api_error(raised_from(RayActorError()))
    assert (gone.status, gone.kind) == (503, "replica_unavailable") and "retry" in gone.message
    client = _as_api_error(raised_from(ClientError("the upload is not one image ")))
    assert (client.status, client.message) == (400, "the upload is not one image")
    other = ValueError("a bug")
    assert _as_api_error(other) is other  # answered as a 500 by the app


def test_streamed_text_becomes_openai_chunk_events_then_done():
    async def pieces():
        for piece in ("Find", "ings"):
            yield piece

    async def events():
        return [event async for event in _sse(pieces(), "chatcmpl-1", 7, "p2med")]

    *chunks, done = asyncio.run(events())
    assert done == "data: [DONE]\n\n"
    bodies = [json.loads(chunk.removeprefix("data: ")) for chunk in chunks]
    assert all(chunk.endswith("\n\n") for chunk in chunks)
    assert [b["choices"][0]["delta"] for b in bodies] == [
        {"role": "assistant", "content": ""},
        {"content": "Find"},
        {"content": "ings"},
        {},
    ]
    assert [b["choices"][0]["finish_reason"] for b in bodies] == [None, None, None, "stop"]
    assert {(b["id"], b["object"], b["created"], b["model"]) for b in bodies} == {
        ("chatcmpl-1", "chat.completion.chunk", 7, "p2med")
    }


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (ApiError(504, "the request took longer than 300 s", "timeout"), (504, "timeout")),
        (RayActorError(), (503, "replica_unavailable")),
        (ValueError("a message quoting the prompt"), (500, "server_error")),
    ],
)
def test_a_stream_failing_mid_way_ends_with_an_error_event_and_no_done(failure, error):
    """The status line went out with the first chunk: the error comes as the last event,
    which OpenAI's client raises."""

    async def pieces():
        yield "Find"
        raise failure

    async def events():
        return [event async for event in _sse(pieces(), "chatcmpl-1", 7, "p2med")]

    *chunks, last = asyncio.run(events())
    assert json.loads(chunks[-1].removeprefix("data: "))["choices"][0]["delta"] == {"content": "Find"}
    body = json.loads(last.removeprefix("data: "))["error"]
    assert (body["code"], body["type"]) == error and "prompt" not in body["message"]
