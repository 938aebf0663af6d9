"""The text meter counts a chat body's bytes outside its data URIs exactly, however the
body is cut into chunks, and an escaped quote does not open a URI."""

from __future__ import annotations

import base64
import json
import os

import pytest

from p2med.serve_apps.textmeter import TextMeter


def body_and_text_bytes() -> tuple[bytes, int]:
    """A chat body with two images among its text; the bytes that are not the images' URI strings."""
    uris = [f"data:image/png;base64,{base64.b64encode(os.urandom(n)).decode()}" for n in (300, 1000)]
    parts = [
        {"type": "text", "text": 'He said "data: none" twice \\"data:'},
        {"type": "image_url", "image_url": {"url": uris[0]}},
        {"type": "text", "text": "Compare with the film before."},
        {"type": "image_url", "image_url": {"url": uris[1]}},
    ]
    body = json.dumps({"model": "p2med", "messages": [{"role": "user", "content": parts}]}).encode()
    return body, len(body) - sum(len(json.dumps(uri)) for uri in uris)


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 7, 64, 10**6])
def test_the_count_is_the_bytes_outside_the_data_uris_whatever_the_chunks(chunk):
    body, text_bytes = body_and_text_bytes()
    meter = TextMeter()
    for at in range(0, len(body), chunk):
        meter.add(body[at : at + chunk])
    assert meter.outside == text_bytes


def test_a_body_without_images_counts_whole():
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 10_000}]}).encode()
    meter = TextMeter()
    meter.add(body[:4_000])
    meter.add(body[4_000:])
    assert meter.outside == len(body)
