"""The serving app on a real local Ray Serve, over real HTTP: every endpoint with good and
bad input, the OpenAI client library unchanged, and the deployments' configuration.

The model is an untrained tiny one (what it writes is not tested here, only that the app
serves it); the DICOM inputs come from the synthetic generator.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import numpy as np
import openai
import pytest
import ray
from PIL import Image
from ray import serve

from p2med.serve_apps.server import APP_NAME
from tests.serve_apps.conftest import KEY, zipped
from tests.support.dicoms import malformed_radiographs

pytestmark = pytest.mark.slow  # the app on a local Ray Serve


def png(size: int = 80) -> bytes:
    pixels = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == status
    return body["error"]["message"]


def test_health_needs_no_key(base_url):
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    # Serve's own route, answered by HAProxy, which the docs give load balancers
    assert httpx.get(f"{base_url}/-/healthz").status_code == 200


def test_the_api_needs_a_valid_key(base_url, client):
    assert "missing API key" in error_of(httpx.get(f"{base_url}/v1/models"), 401)
    wrong = httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert "invalid API key" in error_of(wrong, 401)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["p2med"]


def test_reports_from_an_xray_dicom_a_ct_series_and_a_ct_zip(client, xray_dicom, ct_series):
    uploads = {
        "xray_report": [("file", ("x.dcm", xray_dicom))],
        "ct_report": [("file", (f"{i}.dcm", s)) for i, s in enumerate(ct_series)],
        "differential_diagnosis": [("file", ("ct.zip", zipped(ct_series)))],
    }
    for task, files in uploads.items():
        form = {"task": task, "clinical_text": "Fever for 3 days."}
        response = client.post("/v1/reports", data=form, files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["task"] == task and body["model"] == "p2med" and isinstance(body["report"], str)


def test_bad_report_requests_get_a_4xx_naming_the_problem(client, xray_dicom, ct_series):
    def report(task="xray_report", **files):
        return client.post("/v1/reports", data={"task": task}, files=[("file", f) for f in files.values()])

    assert "task must be one of" in error_of(report("make_coffee", f=("x.dcm", xray_dicom)), 400)
    ct_zip = ("c.zip", zipped(ct_series))
    assert "needs a XRAY but the upload is a CT" in error_of(report("xray_report", f=ct_zip), 400)
    assert "not an image" in error_of(report(f=("notes.txt", b"just some text")), 400)
    corrupt = xray_dicom[: len(xray_dicom) // 2]  # the header survives, the pixel data does not
    assert "unreadable_file" in error_of(report(f=("x.dcm", corrupt)), 400)
    assert "ct_too_few_slices" in error_of(report("ct_report", f=("one.zip", zipped(ct_series[:1]))), 400)
    no_file = client.post("/v1/reports", data={"task": "xray_report"})  # a plain form, not multipart
    assert "multipart/form-data" in error_of(no_file, 415)
    too_big = np.random.default_rng(1).integers(0, 256, 2 * 2**20, dtype=np.uint8).tobytes()
    assert "limit" in error_of(report(f=("big.dcm", too_big)), 413)


def test_malformed_uploads_sent_with_good_ones_fail_alone(base_url, xray_dicom):
    """Five uploads at once, likely decoded in one encoder batch: the two with headers no
    decoder can use get their 400, the three good ones their report."""
    bad = list(malformed_radiographs().values())
    uploads = [xray_dicom, bad[0], xray_dicom, bad[1], xray_dicom]
    statuses: dict[int, int] = {}

    def send(index: int) -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
            files = [("file", ("x.dcm", uploads[index]))]
            statuses[index] = http.post("/v1/reports", data={"task": "xray_report"}, files=files).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [statuses[i] for i in range(len(uploads))] == [200, 400, 200, 400, 200]


def test_chat_completions_with_the_openai_client(base_url):
    api = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, timeout=120)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(png())}},
                {"type": "text", "text": "Write the radiology report for this chest X-ray."},
            ],
        }
    ]
    answer = api.chat.completions.create(model="p2med", messages=messages, max_tokens=5)
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)

    chunks = list(api.chat.completions.create(model="p2med", messages=messages, max_tokens=5, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert streamed == answer.choices[0].message.content  # greedy: the same text either way


def test_chinese_clinical_text_through_the_reports_form_and_the_openai_client(base_url, client, xray_dicom):
    form = {"task": "xray_report", "clinical_text": "患儿发热、咳嗽3天，体温39.2℃。"}
    response = client.post("/v1/reports", data=form, files=[("file", ("胸片.dcm", xray_dicom))])
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["report"], str)
    api = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, timeout=120)
    parts = [
        {"type": "image_url", "image_url": {"url": data_uri(png())}},
        {"type": "text", "text": "请为这张胸部X线片书写影像报告（影像所见及印象）。"},
    ]
    messages = [{"role": "user", "content": parts}]
    answer = api.chat.completions.create(model="p2med", messages=messages, max_tokens=5)
    chunks = list(api.chat.completions.create(model="p2med", messages=messages, max_tokens=5, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content


def test_chat_streams_server_sent_events(client, xray_dicom):
    body = {
        "model": "p2med",
        "stream": True,
        "max_tokens": 4,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_uri(xray_dicom, "application/dicom")}},
                    {"type": "text", "text": "Write the report."},
                ],
            }
        ],
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_bad_chat_requests_get_a_4xx_naming_the_problem(client):
    def chat(**changes):
        body = {"model": "p2med", "messages": [{"role": "user", "content": "Give the diagnosis."}]} | changes
        return client.post("/v1/chat/completions", json=body)

    def image(url):
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Report."}]
        return [{"role": "user", "content": parts}]

    assert "not served here" in error_of(chat(model="gpt-4"), 404)
    assert "URLs are not fetched" in error_of(chat(messages=image("https://example.com/x.png")), 400)
    assert "invalid base64" in error_of(chat(messages=image("data:image/png;base64,@@@")), 400)
    assert "not accepted" in error_of(chat(messages=image(data_uri(b"GIF89a", "image/gif"))), 400)
    assert "not an image" in error_of(chat(messages=image(data_uri(b"plain text"))), 400)
    assert "at most 32" in error_of(chat(max_tokens=1000), 400)
    assert "messages" in error_of(chat(messages=[]), 400)
    for body, message in {
        b"{oops": "not JSON",
        b'{"model": "\xff"}': "not JSON in UTF-8",
        b"[" * 100_000 + b"]" * 100_000: "nests too deeply",
    }.items():
        assert message in error_of(client.post("/v1/chat/completions", content=body), 400)
    assert "seed" in error_of(chat(seed=2**64), 400)
    nine = [{"type": "image_url", "image_url": {"url": data_uri(png(32))}}] * 9 + [
        {"type": "text", "text": "Hi"}
    ]
    assert "hold over 8 images; this server takes at most 8" in error_of(
        chat(messages=[{"role": "user", "content": nine}]), 400
    )
    long = [{"role": "user", "content": "cough " * 20_000}]
    assert "characters; this server takes at most 65,536" in error_of(chat(messages=long), 400)
    huge = [{"role": "user", "content": "cough " * 100_000}]  # refused while it streams in
    assert "bytes besides its images' data URIs" in error_of(chat(messages=huge), 400)
    assert "no text" in error_of(chat(messages=[{"role": "user", "content": "  "}]), 400)


def test_each_deployment_runs_with_its_own_autoscaling_and_queue_limits(base_url, settings):
    controller = serve.context._get_global_client()._controller
    details = ray.get(controller.get_serve_instance_details.remote())
    deployments = details["applications"][APP_NAME]["deployments"]
    assert set(deployments) == {"Ingress", "VisionEncoder", "LLM"}
    llm = deployments["LLM"]["deployment_config"]
    assert llm["autoscaling_config"]["max_replicas"] == settings.llm.max_replicas
    assert llm["autoscaling_config"]["target_ongoing_requests"] == settings.llm.target_ongoing_requests
    assert llm["max_ongoing_requests"] == settings.llm.max_ongoing_requests
    assert llm["max_queued_requests"] == settings.llm.max_queued_requests
    assert llm["ray_actor_options"]["num_cpus"] == settings.llm.num_cpus


def test_requests_decoded_in_one_batch_each_stop_at_their_own_length(client):
    """Sent together, requests with different max_tokens share decode steps (one batch of
    greedy rows) and each gets exactly the text it gets alone."""
    image = {"type": "image_url", "image_url": {"url": data_uri(png())}}
    lengths = (2, 5, 9, 16)

    def ask(max_tokens: int) -> str:
        content = [image, {"type": "text", "text": "Write the report."}]
        messages = [{"role": "user", "content": content}]
        body = {"model": "p2med", "max_tokens": max_tokens, "messages": messages}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    alone = {n: ask(n) for n in lengths}
    assert len(set(alone.values())) > 1  # the lengths tell the answers apart
    together: dict[int, str] = {}
    threads = [threading.Thread(target=lambda n=n: together.update({n: ask(n)})) for n in lengths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
