"""A chat body read as it streams in: each base64 data URI's payload is decoded and set
apart, the JSON around it kept as it came, however the body is cut into chunks."""

from __future__ import annotations

import base64
import json
import os

import pytest

from p2med.serve_apps.chatbody import ChatBody
from p2med.serve_apps.errors import ClientError

IMAGES = [os.urandom(300), os.urandom(1000), b"\xff\xd8" + os.urandom(7)]


def uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def chat(parts: list[dict]) -> dict:
    return {"model": "p2med", "messages": [{"role": "user", "content": parts}]}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def read(body: bytes, chunk: int, max_images: int = 8) -> ChatBody:
    read = ChatBody(max_images)
    for at in range(0, len(body), chunk):
        read.add(body[at : at + chunk])
    read.end()
    return read


SENT = chat(
    [
        text('He said "data: none", and wrote \\"data:image/png;base64,AAAA'),
        image(uri(IMAGES[0])),
        text("data:text/plain,not base64"),
        image(uri(IMAGES[1], "application/dicom")),
        image(uri(IMAGES[2], "image/jpeg")),
        text("Compare them."),
    ]
)
KEPT = chat(
    [
        SENT["messages"][0]["content"][0],
        image("data:image/png;base64,*0"),
        SENT["messages"][0]["content"][2],
        image("data:application/dicom;base64,*1"),
        image("data:image/jpeg;base64,*2"),
        SENT["messages"][0]["content"][5],
    ]
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 6, 7, 64, 10**6])
def test_payloads_are_decoded_and_set_apart_whatever_the_chunks(chunk):
    read_body = read(json.dumps(SENT).encode(), chunk)
    assert json.loads(read_body.json) == KEPT
    assert read_body.images == IMAGES


def test_slashes_escaped_as_json_allows_are_read():
    escaped = json.dumps(SENT).replace("/", "\\/").encode()  # as PHP's json_encode writes
    for chunk in (1, 4, 10**6):
        read_body = read(escaped, chunk)
        assert read_body.images == IMAGES
        assert json.loads(read_body.json)["messages"][0]["content"][1] == image("data:image/png;base64,*0")


@pytest.mark.parametrize("payload", ["@@@@", "AAA", "AA==AAAA", "AA\\u0041A"])
def test_a_payload_that_is_not_base64_is_refused(payload):
    body = json.dumps(chat([image("data:image/png;base64,X"), text("Hi")])).replace("X", payload)
    with pytest.raises(ClientError, match="invalid base64"):
        read(body.encode(), 2)


def test_a_body_without_images_is_kept_whole():
    body = json.dumps(chat([text("x" * 10_000)])).encode()
    read_body = read(body, 4_000)
    assert read_body.json == body and read_body.images == []


def test_an_image_over_the_limit_is_refused_as_it_starts():
    body = json.dumps(SENT).encode()
    assert len(read(body, 7, max_images=3).images) == 3
    third = body.index(b"data:image/jpeg")
    with pytest.raises(ClientError, match="hold over 2 images; this server takes at most 2"):
        read(body[: third + len("data:image/jpeg;base64,") + 1], 7, max_images=2)
