"""Routes beyond OpenAI's JSON ones: audio uploads (the model is a multipart form field), the
native llama-server routes of the model named in the body, and `/upstream/{model}/…`, which
reaches one model's own server (its /props, /slots, web UI) after switching to it."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import web

from ..config import Model
from ..errors import BadRequest, RequestTooLarge, UnknownModel
from .dialects import OPENAI
from .keys import SCHEDULER
from .multipart import FieldScanner, MalformedForm, boundary_of
from .openai import forward
from .pipeline import Body, Call, ModelRoute, check_length, model_named
from .relay import upstream_headers

CHUNK = 64 * 1024
IN_MEMORY = 1024 * 1024  # an upload read before its `model` field stays in memory up to this, then on disk


class Upload:
    """A request body sent on as it arrives: what was read already (`head`, spooled), then the
    rest of the client's stream. `started` once any of it went out (a retry is then impossible)."""

    def __init__(self, head: tempfile.SpooledTemporaryFile | None, request: web.Request, read: int,
                 limit: int) -> None:
        self.head, self.request, self.read, self.limit = head, request, read, limit
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head is not None:
            self.head.seek(0)
            while chunk := self.head.read(CHUNK):
                self.started = True
                yield chunk
        async for chunk in self.request.content.iter_chunked(CHUNK):
            self.read += len(chunk)
            if self.read > self.limit:
                raise RequestTooLarge(f"request body is larger than the limit of {self.limit} bytes "
                                      "(max_body_bytes in config.yaml)")
            self.started = True
            yield chunk


def _send_headers(request: web.Request, keep_encoding: bool = False) -> dict[str, str]:
    headers = upstream_headers(request)
    if keep_encoding and "Accept-Encoding" in request.headers:
        headers["Accept-Encoding"] = request.headers["Accept-Encoding"]
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)  # sent as it came: no chunked re-encoding
    return headers


async def _as_uploaded(request: web.Request, model: Model, payload: None, body: Body) -> Call:
    return Call(body, headers=_send_headers(request))


async def _to_its_path(request: web.Request, model: Model, payload: None, body: Body) -> Call:
    path = upstream_target(request.raw_path if request.raw_path.startswith("/") else request.rel_url.raw_path_qs)
    # the web UI's files are stored compressed: let them through as they are (the relay does not decompress)
    return Call(body, path=path, headers=_send_headers(request, keep_encoding=True))


# the model's name is in a form field, or in the path: these routes find it themselves
_AUDIO = ModelRoute(OPENAI, _as_uploaded)
_UPSTREAM = ModelRoute(OPENAI, _to_its_path)


async def audio(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/transcriptions and /translations: read the form only up to its `model`
    field, then stream the whole body to that model's server."""
    config = request.app[SCHEDULER].config
    check_length(request, config)
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise BadRequest(f"{request.path} takes a multipart/form-data body (with `file` and `model` fields)",
                         "invalid_multipart")
    scanner = FieldScanner(boundary, "model")
    head = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    read = 0
    try:
        while scanner.value is None and not scanner.ended:
            chunk = await request.content.readany()
            if not chunk:
                break
            read += len(chunk)
            if read > config.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=config.max_body_bytes, actual_size=read)
            head.write(chunk)
            try:
                scanner.feed(chunk)
            except MalformedForm as e:
                raise BadRequest(f"malformed multipart body: {e}", "invalid_multipart") from None
        model = model_named(config, scanner.value.strip() if scanner.value is not None else None,
                            "a multipart form with a `model` field")
        return await _AUDIO.to_model(request, model, None, Upload(head, request, read, config.max_body_bytes))
    finally:
        head.close()


async def upstream(request: web.Request) -> web.StreamResponse:
    """ANY /upstream/{model}/{path}: `path` on that model's own server, byte for byte."""
    scheduler = request.app[SCHEDULER]
    name = request.match_info["model"]
    model = scheduler.config.resolve(name)
    if model is None:
        raise UnknownModel.named(name, scheduler.config.known())
    check_length(request, scheduler.config)
    body = Upload(None, request, 0, scheduler.config.max_body_bytes) if request.body_exists else b""
    return await _UPSTREAM.to_model(request, model, None, body)


def upstream_target(raw: str) -> str:
    """The target for the backend of a raw `/upstream/{model}/{path}?{query}`: byte for byte, so
    that `%3F`, `%23`, `%2F` mean what they meant to the client; 400 for a `.` or `..` segment,
    however encoded, which would reach another path of the backend with backend_api_key attached."""
    target = "/" + raw.split("/", 3)[3]
    path = target.partition("?")[0]
    for _ in range(3):  # %252e%252e is `..` to a backend that decodes twice
        path = unquote(path)
    if any(segment in (".", "..") for segment in re.split(r"[/\\]", path)):
        raise BadRequest(f"/upstream: the path {target!r} holds a `.` or `..` segment; send the path "
                         "without them", "invalid_path")
    return target


async def upstream_root(request: web.Request) -> web.StreamResponse:
    """/upstream/{model} → /upstream/{model}/, so that the web UI's relative links resolve."""
    raise web.HTTPPermanentRedirect(f"/upstream/{request.match_info['model']}/")


# llama-server's own routes whose JSON body names the model (the OpenAI ones under /v1 are
# forwarded by the catch-all in http/openai.py)
NATIVE_JSON = ("/completion", "/completions", "/infill", "/tokenize", "/detokenize", "/embedding", "/embeddings",
               "/rerank", "/reranking", "/v1/rerank", "/v1/reranking", "/v1/responses", "/apply-template")

ROUTES = [
    web.post("/v1/audio/transcriptions", audio),
    web.post("/v1/audio/translations", audio),
    *(web.post(path, forward) for path in NATIVE_JSON),
    web.get("/upstream/{model}", upstream_root),
    web.route("*", "/upstream/{model}/{tail:.*}", upstream),
]
