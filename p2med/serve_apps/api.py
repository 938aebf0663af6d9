"""The HTTP API (FastAPI on a Serve ingress deployment).

    GET  /healthz               liveness, no key
    GET  /v1/models             the served model (OpenAI format)
    POST /v1/chat/completions   OpenAI-compatible; images as data URIs (PNG, JPEG, DICOM, CT zip);
                                `stream: true` answers with server-sent events
    POST /v1/reports            multipart: `file` (one X-ray, or a CT's slices or zip), `task`,
                                optional `clinical_text` -> {"task", "report", "model"}
    /demo                       the Gradio demo (`demo.py`), its password an API key

Every request but /healthz needs `Authorization: Bearer <key>` unless the app is
configured open. Every refusal is a JSON error `{"error": {"message", "type", "code"}}`:
4xx for the client's mistakes, 503 with Retry-After when the app is at capacity. Nothing
of a request's content (text, image bytes, headers) is logged.

Each image goes to the VisionEncoder; its response, once finished, is passed on to the
LLM call, so Serve hands the encoding from one deployment to the next (by reference).
"""

# No `from __future__ import annotations` here: FastAPI reads the route parameters' types
# at runtime, and Serve's class-based views cannot resolve string annotations.
import asyncio
import binascii
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from p2med.model.checkpoint import check_model_folder
from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.image_files import ImageFiles, imaging_for
from p2med.platform.data.prompts import request_prompt
from p2med.platform.data.tasks import IMAGE_TASKS
from p2med.platform.storage import resolve
from p2med.serve_apps.chatbody import REFERENCE, ChatBody
from p2med.serve_apps.compute import Completion
from p2med.serve_apps.demo import DemoRefusal, build_demo
from p2med.serve_apps.errors import ClientError
from p2med.serve_apps.readers import HeaderReaders
from p2med.serve_apps.settings import ServeSettings
from p2med.serve_apps.uploads import decode_upload, inspect_upload

DATA_URI_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/zip")
RETRY_AFTER_S = "1"
DEMO_PATH = "/demo"

api = FastAPI(title="P2Med API", docs_url=None, redoc_url=None)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **headers: str):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_error_body(status, message, kind), status_code=status, headers=headers)


def _error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.kind, exc.headers)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), "invalid_request_error")


@api.exception_handler(Exception)
async def _server_error(_: Request, exc: Exception) -> JSONResponse:
    # the type only: a message could quote the request
    return _error(500, f"internal error ({type(exc).__name__})", "server_error")


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(400, _validation_message(exc.errors()), "invalid_request_error")


def _validation_message(errors: list[Any]) -> str:
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid')}"


class OpenAIModel(BaseModel):
    """A part of OpenAI's request format: fields this model does not use are ignored."""

    model_config = ConfigDict(extra="ignore")


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIModel):
    url: str


class ImagePart(OpenAIModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(OpenAIModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart | ImagePart]


class ChatRequest(OpenAIModel):
    """The OpenAI chat-completions fields this model honours; others are ignored."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what a torch generator takes


def _chat_request(body: bytearray) -> ChatRequest:
    """The request in a chat body (`ChatBody.json`: its images are set apart)."""
    try:
        payload = json.loads(body)
    except ValueError:  # not UTF-8, or not JSON
        raise ApiError(400, "the body is not JSON in UTF-8") from None
    except RecursionError:
        raise ApiError(400, "the body's JSON nests too deeply") from None
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(400, _validation_message(exc.errors())) from None


def _chat_inputs(
    messages: list[Message],
    images: list[bytes],
    max_bytes: int,
    max_images: int,
    inspect: Callable[[list[bytes], int], ImageFiles] = inspect_upload,
) -> tuple[list[list[bytes]], str]:
    """The images (as upload files, in order) and the text of a chat's messages; `images`:
    the data URIs' payloads that `ChatBody` set apart. Each upload is checked by `inspect`
    (`inspect_upload`, or where it runs: `HeaderReaders.inspect`)."""
    asked = [m.content for m in messages if m.role != "assistant"]
    count = sum(isinstance(part, ImagePart) for parts in asked if isinstance(parts, list) for part in parts)
    if count > max_images:  # counted before any is decoded
        raise ApiError(400, f"the messages hold {count} images; this server takes at most {max_images}")
    uploads, texts = [], []
    for message in messages:
        if message.role == "assistant":
            continue
        parts = message.content
        if isinstance(parts, str):
            parts = [TextPart(type="text", text=parts)]
        for part in parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
            else:
                uploads.append([_data_uri_bytes(part.image_url, images)])
    text = "\n".join(t.strip() for t in texts if t.strip())
    if not text:
        raise ApiError(400, "the messages hold no text: say what to write")
    decoded = sum(_client_call(inspect, files, max_bytes).pixel_bytes for files in uploads)
    if decoded > max_bytes:  # each image alone is within it
        together = f"the images' pixel data decodes to {decoded:,} bytes together"
        raise ApiError(400, f"{together}; the limit is {max_bytes:,}")
    return uploads, text


def _data_uri_bytes(image: ImageURL, images: list[bytes]) -> bytes:
    """The bytes of a base64 data URI of an accepted type, or of the payload `ChatBody` set
    apart for it (`*<index>` into `images`); remote URLs are not fetched."""
    head, comma, data = image.url.partition(",")
    if not head.startswith("data:") or not comma or not head.endswith(";base64"):
        raise ApiError(
            400, "image_url must be a base64 data URI (data:image/png;base64,...); URLs are not fetched"
        )
    media = head.removeprefix("data:").removesuffix(";base64")
    if media not in DATA_URI_TYPES:
        raise ApiError(400, f"image type {media!r} is not accepted; send one of {', '.join(DATA_URI_TYPES)}")
    if (reference := REFERENCE.fullmatch(data)) and int(reference[1]) < len(images):
        return images[int(reference[1])]
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_url holds invalid base64") from None


def _client_call(fn, *args):
    try:
        return fn(*args)
    except ClientError as exc:
        raise ApiError(400, str(exc)) from None


def _as_api_error(exc: Exception) -> Exception:
    """The answer to a failed deployment call: 400 for a ClientError; 503 with Retry-After for
    backpressure and for a replica that died while it held the request (Serve starts a
    new one; a retry goes to a live replica), also when Ray wrapped them on their way
    through the chain; else `exc` itself (500)."""
    seen: BaseException | None = exc
    while seen is not None:
        wrapped = getattr(seen, "cause", None)  # a RayTaskError: its message holds a traceback
        if isinstance(wrapped, BaseException):
            seen = wrapped
            continue
        if isinstance(seen, BackPressureError):
            busy = "the server is at capacity; retry shortly"
            return ApiError(503, busy, "overloaded", **{"Retry-After": RETRY_AFTER_S})
        if isinstance(seen, RayActorError):
            gone = "the model replica answering this request stopped; retry shortly"
            return ApiError(503, gone, "replica_unavailable", **{"Retry-After": RETRY_AFTER_S})
        if isinstance(seen, ClientError):
            return ApiError(400, str(seen).strip())
        seen = seen.__cause__
    return exc


async def _sse(pieces: AsyncIterator[str], ident: str, created: int, model: str) -> AsyncIterator[str]:
    """OpenAI's chat.completion.chunk events, then [DONE]."""

    def event(delta: dict[str, str], finish: str | None = None) -> str:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    try:
        async for piece in pieces:
            yield event({"content": piece})
    except Exception as exc:  # the status line is long sent: the stream ends with an error event
        failure = _as_api_error(exc)
        if isinstance(failure, ApiError):
            body = _error_body(failure.status, failure.message, failure.kind)
        else:  # the type only, as a 500 says
            body = _error_body(500, f"internal error ({type(exc).__name__})", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
        return
    yield event({}, "stop")
    yield "data: [DONE]\n\n"


# Ray Serve pickles the deployment class when the decorator runs (at import), with the
# module globals it finds then: every helper the class uses must be defined above it.


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, vision: DeploymentHandle, llm: DeploymentHandle, settings: ServeSettings) -> None:
        self.vision, self.llm, self.llm_stream = vision, llm, llm.options(stream=True)
        self.settings = settings
        location = resolve(settings.model, settings.storage)
        self.model_config = check_model_folder(location.uri, location.fs)
        self.readers = HeaderReaders(settings.header_readers)
        # build_app wrote in the keys of its environment, and refuses an app with none that is not open
        self.keys = {key.get_secret_value() for key in settings.api_keys}
        if settings.demo:
            self._mount_demo()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        entry = {"id": self.settings.model_name, "object": "model", "created": 0, "owned_by": "p2med"}
        return {"object": "list", "data": [entry]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._authorize(request)
        body = await self._chat_body(request)
        chat = _chat_request(body.json)
        if chat.model != self.settings.model_name:
            raise ApiError(404, f"model {chat.model!r} is not served here; GET /v1/models lists it")
        limits = (self.settings.max_request_bytes, self.settings.max_images, self.readers.inspect)
        # off the event loop: it waits for every file's header to be read (a CT's slices: thousands)
        uploads, text = await asyncio.to_thread(_chat_inputs, chat.messages, body.images, *limits)
        prompt = f"{IMAGE_TOKEN}\n" * len(uploads) + text
        completion = self._completion(prompt, chat.max_completion_tokens or chat.max_tokens, chat)
        name, created, ident = self.settings.model_name, int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            pieces = await self._stream(completion, uploads)
            return StreamingResponse(_sse(pieces, ident, created, name), media_type="text/event-stream")
        text = await self._complete(completion, uploads)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [choice],
        }

    @api.post("/v1/reports")
    async def reports(self, request: Request) -> dict[str, str]:
        self._authorize(request)
        form = await self._form(request)
        task, clinical = form.get("task"), form.get("clinical_text")
        task = task if isinstance(task, str) else ""
        files = [await f.read() for _, f in form.multi_items() if isinstance(f, UploadFile)]
        clinical_text = clinical if isinstance(clinical, str) else ""
        completion = await asyncio.to_thread(self._report, task, files, clinical_text)
        report = await self._complete(completion, [files])
        return {"task": task, "report": report, "model": self.settings.model_name}

    def _report(self, task: str, files: list[bytes], clinical_text: str) -> Completion:
        """What to generate for a report of `task` on one uploaded image (the reports
        endpoint and the demo; it waits for every file's header to be read: call it off
        the event loop)."""
        if task not in IMAGE_TASKS:
            raise ApiError(400, f"task must be one of {', '.join(IMAGE_TASKS)}; got {task!r}")
        if not files:
            raise ApiError(400, "no file uploaded: send one X-ray, or a CT series as files or one zip")
        kind = _client_call(self.readers.inspect, files, self.settings.max_request_bytes).kind
        wanted = task.removesuffix("_report")
        if task.endswith("_report") and kind != wanted:
            raise ApiError(400, f"task {task} needs a {wanted.upper()} but the upload is a {kind.upper()}")
        prompt = request_prompt(task, [kind], clinical_text, self.model_config.language)
        return self._completion(prompt, None)

    def _mount_demo(self) -> None:
        """The Gradio page at /demo, behind a login whose password is an API key (unless open)."""
        imaging = imaging_for(self.model_config)
        limit = self.settings.max_request_bytes

        async def write(task: str, files: list[bytes], clinical_text: str) -> AsyncIterator[str]:
            try:
                completion = await asyncio.to_thread(self._report, task, files, clinical_text)
                return await self._stream(completion, [files])
            except ApiError as refusal:
                raise DemoRefusal(refusal.message) from None

        def preview(files: list[bytes]):
            try:
                return decode_upload(files, imaging, limit)
            except ClientError as refusal:
                raise DemoRefusal(str(refusal)) from None

        def login(_user: str, password: str) -> bool:
            return any(hmac.compare_digest(password.encode(), key.encode()) for key in self.keys)

        auth = None if self.settings.open_access else login
        gr.mount_gradio_app(api, build_demo(write, preview), path=DEMO_PATH, auth=auth, max_file_size=limit)

    def _authorize(self, request: Request) -> None:
        if self.settings.open_access:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", "authentication_error")
        if not any(hmac.compare_digest(key.encode(), known.encode()) for known in self.keys):
            raise ApiError(401, "invalid API key", "authentication_error")

    def _completion(self, prompt: str, max_tokens: int | None, chat: ChatRequest | None = None) -> Completion:
        if len(prompt) > self.settings.max_prompt_chars:
            raise ApiError(
                400,
                f"the text has {len(prompt):,} characters; this server takes at most "
                f"{self.settings.max_prompt_chars:,} (max_prompt_chars)",
            )
        limit = self.settings.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limit}")
        sampling = {}
        if chat is not None:
            sampling = {"temperature": chat.temperature, "top_p": chat.top_p, "seed": chat.seed}
        return Completion(prompt, max_tokens or self.settings.default_max_tokens, **sampling)

    async def _encodings(self, uploads: list[list[bytes]]) -> list[DeploymentResponse]:
        """Each upload's VisionEncoder response, finished, to pass on to the LLM.

        Serve checks a deployment's queue limit when it is called, before the call's
        arguments resolve: an LLM call chained onto encodings still running passed that
        check with every other such call, and a full LLM queued them all (no 503). Called
        once the encodings are ready, a full LLM refuses at once."""
        encodings = [self.vision.encode.remote(files) for files in uploads]
        for encoding in encodings:
            await encoding
        return encodings

    async def _complete(self, completion: Completion, uploads: list[list[bytes]]) -> str:
        """The completion's text in one reply from the LLM, within `request_timeout_s`."""
        reply = None
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                encodings = await self._encodings(uploads)
                reply = self.llm.complete.remote(completion, *encodings)
                return await reply
        except TimeoutError:
            if reply is not None:
                reply.cancel()  # its row leaves the running batch
            raise self._timed_out() from None
        except Exception as exc:
            raise _as_api_error(exc) from None

    async def _stream(self, completion: Completion, uploads: list[list[bytes]]) -> AsyncIterator[str]:
        """The completion's text pieces, within `request_timeout_s`; the first is awaited
        here, so that a bad upload or prompt, or a full app, is answered with its status
        before any streaming starts (later failures end the stream: `_sse`)."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        pieces = None
        try:
            async with asyncio.timeout_at(deadline):
                pieces = self.llm_stream.stream.remote(completion, *await self._encodings(uploads))
                first = await pieces.__anext__()
        except StopAsyncIteration:
            first = ""
        except TimeoutError:
            if pieces is not None:
                pieces.cancel()
            raise self._timed_out() from None
        except Exception as exc:
            raise _as_api_error(exc) from None

        async def rest() -> AsyncIterator[str]:
            if first:
                yield first
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    piece = await asyncio.wait_for(anext(pieces), max(left, 0.0))
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    pieces.cancel()
                    raise self._timed_out() from None
                yield piece

        return rest()

    def _timed_out(self) -> ApiError:
        limit = self.settings.request_timeout_s
        return ApiError(504, f"the request took longer than {limit:g} s (request_timeout_s)", "timeout")

    async def _chunks(self, request: Request) -> AsyncIterator[bytes]:
        """The request body as it streams in, refused with 413 past the size limit."""
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request is {int(declared):,} bytes; the limit is {limit:,}")
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request is over the limit of {limit:,} bytes")
            yield chunk
            # Chunks already received come without a wait: without this, one large body
            # would be read to its end in one step of the event loop, and every other
            # request (a health check too) would wait for it.
            await asyncio.sleep(0)

    async def _body(self, request: Request) -> bytearray:
        body = bytearray()  # grown in place, not chunks joined: a large body is held once
        async for chunk in self._chunks(request):
            body += chunk
        return body

    async def _chat_body(self, request: Request) -> ChatBody:
        """A chat body with its images set apart as it streams in, refused with 400 as soon
        as the rest is more than the text limit allows."""
        body, limit = ChatBody(self.settings.max_images), self.settings.max_text_bytes
        async for chunk in self._chunks(request):
            _client_call(body.add, chunk)
            if len(body.json) > limit:
                raise ApiError(
                    400,
                    f"the body holds over {limit:,} bytes besides its images' data URIs: more text "
                    f"than this server takes ({self.settings.max_prompt_chars:,} characters, "
                    "max_prompt_chars)",
                )
        body.end()
        return body

    async def _form(self, request: Request):
        body = await self._body(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "send multipart/form-data with a file field and a task field")

        async def once() -> AsyncIterator[bytearray]:
            yield body

        try:
            return await MultiPartParser(request.headers, once()).parse()
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart body: {exc.message}") from None
