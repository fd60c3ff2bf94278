"""Forwarding a request to the model's backend and its answer back: send, then a whole answer or
a stream, or an end with an error in the route's dialect. docs/design.md, "One request pipeline"."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterable

from aiohttp import web

from ..backends.upstream import Answer, BrokenOff, CannotConnect, NoAnswer, send
from ..config import Model
from ..errors import BackendGone, BackendUnreachable, ShuttingDown, SwitchError
from ..observe.middleware import Observation, observed
from ..observe.usage import usage_of
from .dialects import Dialect
from .keys import INFLIGHT
from .rewrite import Head, Rewrite, Transform

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1 connection-specific headers, plus the framing each hop sets itself
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# compression is pointless on loopback and would hide the bytes from tool-call repair
_NOT_UPSTREAM = HOP_BY_HOP | {"accept-encoding"}
# a client's key is for the switch alone: never sent on (see auth.py); nor a page's Origin, which
# llama-server would echo in Access-Control-Allow-Origin (guard.py)
_CLIENT_KEYS = frozenset({"authorization", "x-api-key", "origin"})
_NOT_FORWARDED = _NOT_UPSTREAM | _CLIENT_KEYS


def upstream_headers(request: web.Request) -> dict[str, str]:
    """The request's headers to send on: no hop-by-hop ones, no client key (routes that send other
    headers start from these)."""
    return {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}


async def relay(request: web.Request, model: Model, body: bytes | AsyncIterable[bytes], dialect: Dialect,
                transform: Transform | None = None, *, path: str | None = None,
                send_headers: dict[str, str] | None = None,
                prepared: web.StreamResponse | None = None) -> web.StreamResponse:
    """Send `body` (bytes, or chunks streamed as they come) to the model's backend and relay the
    answer: an event stream chunk by chunk, any other body whole when `transform` rewrites it,
    else byte for byte as it arrives. `path` (with query, encoded as it goes on the wire) replaces
    the request's, `send_headers` the headers sent upstream. `prepared` is a stream already sent to
    the client (loading progress): the answer's events follow in it, and a backend's error ends it
    in `dialect`."""
    obs = observed(request)
    if obs is not None and obs.wait_began is not None:
        obs.waited_s = time.monotonic() - obs.wait_began
    upstream = await _send(request, model, body, path, send_headers)
    async with upstream:
        head = Head(upstream.status, upstream.content_type)
        if prepared is not None and (head.status != 200 or not head.event_stream):
            return await _end_with_backend_error(prepared, model, upstream, dialect)
        rewrite = transform(head) if transform else None
        headers = _answer_headers(upstream, rewrite, obs) + [("X-LLM-Switch-Model", model.name)]
        if rewrite and not head.event_stream:
            return await _whole(request, model, upstream, rewrite, headers, obs)
        response = prepared
        if response is None:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if upstream.length is not None and rewrite is None:  # only where a length framed the body
                response.content_length = upstream.length
            await response.prepare(request)
        return await _stream(request, response, model, upstream, rewrite, dialect, obs)


async def _send(request: web.Request, model: Model, body: bytes | AsyncIterable[bytes], path: str | None,
                send_headers: dict[str, str] | None) -> Answer:
    target = request.rel_url.raw_path_qs if path is None else path  # as given: /upstream's is byte for byte
    headers = upstream_headers(request) if send_headers is None else send_headers
    if model.backend_api_key:
        headers = {**headers, "Authorization": f"Bearer {model.backend_api_key}"}
    try:
        return await send(model.url, request.method, target, headers, body)
    except CannotConnect as e:
        raise BackendGone(f"{model.name}: cannot connect to {model.url} ({e})") from None
    except (NoAnswer, OSError) as e:
        raise BackendUnreachable(f"{model.name}: {model.url} did not answer ({e})") from None


def _answer_headers(upstream: Answer, rewrite: Rewrite | None, obs: Observation | None) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
    if obs is not None and obs.waited_s:
        headers.append(("X-LLM-Switch-Waited-Seconds", f"{obs.waited_s:.2f}"))
    if rewrite and rewrite.content_type:
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        headers.append(("Content-Type", rewrite.content_type))
    return headers


async def _whole(request: web.Request, model: Model, upstream: Answer, rewrite: Rewrite,
                 headers: list[tuple[str, str]], obs: Observation | None) -> web.Response:
    """The whole answer read, rewritten, and sent."""
    try:
        whole = await upstream.read()
    except BrokenOff as e:
        raise BackendUnreachable(f"{model.name}: the backend broke off its answer ({e})") from None
    if obs is not None:
        obs.first_byte = time.monotonic()
        if upstream.status == 200 and (usage := usage_of(whole[-8192:])) is not None:
            headers.extend(usage.headers().items())
            obs.answered(usage=usage)
    # sent here, not by aiohttp once the handler returns: the client has it before the
    # upstream connection is closed and the request's log line and metrics are done
    response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers,
                            body=rewrite.feed(whole) + rewrite.close())
    with contextlib.suppress(ConnectionResetError):  # the client left; nothing to tell
        await response.prepare(request)
        await response.write_eof()
    return response


async def _stream(request: web.Request, response: web.StreamResponse, model: Model, upstream: Answer,
                  rewrite: Rewrite | None, dialect: Dialect, obs: Observation | None) -> web.StreamResponse:
    """The answer chunk by chunk, as it arrives; cut short with an error where it cannot end."""
    last: deque[bytes] = deque(maxlen=4)  # the answer's last chunks: its usage and timings are there
    first = 0.0
    try:
        async for chunk in upstream.chunks():
            if not last:
                first = time.monotonic()
            last.append(chunk)
            out = rewrite.feed(chunk) if rewrite else chunk
            if out:
                await response.write(out)
        if rewrite and (tail := rewrite.close()):
            await response.write(tail)
    except asyncio.CancelledError:
        if not request.app[INFLIGHT].stopping:
            raise  # the client left
        upstream.close()  # the switch stops and shutdown_grace is over: end the answer visibly
        return await _cut(request, response, upstream, rewrite, dialect, ShuttingDown(
            f"{model.name}: llm-switch stopped before the answer was complete (shutdown_grace); "
            "send the request again"))
    except ConnectionResetError:
        log.info("%s: client went away; closing the request to the backend", model.name)
        upstream.close()
        return response
    except BrokenOff as e:
        log.warning("%s: backend broke off its answer: %s", model.name, e)
        return await _cut(request, response, upstream, rewrite, dialect,
                          BackendUnreachable(f"{model.name}: the backend broke off its answer ({e})"))
    finally:
        # also when the client hung up as soon as it had the answer's end, before the backend's EOF
        if obs is not None and last:
            obs.first_byte = first
            if upstream.status == 200:
                obs.answered(b"".join(last), time.monotonic() - first)
    await response.write_eof()
    return response


async def _cut(request: web.Request, response: web.StreamResponse, upstream: Answer, rewrite: Rewrite | None,
               dialect: Dialect, error: SwitchError) -> web.StreamResponse:
    """End a stream cut short: in an event stream (whatever the client reads it as) what the
    rewrite still holds, then the error in the dialect's frame; any other body is cut visibly (it
    stays short of its Content-Length or final chunk), since its status line is gone."""
    if upstream.content_type != "text/event-stream":
        if request.transport is not None:
            request.transport.close()
        return response
    with contextlib.suppress(ConnectionError, RuntimeError):
        if rewrite and (tail := rewrite.cut_short()):
            await response.write(tail)  # tool calls held so far, repaired
        await response.write(dialect.in_band(error))
        await response.write_eof()
    return response


async def _end_with_backend_error(response: web.StreamResponse, model: Model, upstream: Answer,
                                  dialect: Dialect) -> web.StreamResponse:
    """The backend answered an error (or no event stream) after the client's stream had begun:
    one error in the dialect's frame, the backend's own where the client reads it as it is."""
    try:
        raw = await upstream.read()
    except BrokenOff as e:
        raw = f"the backend broke off its answer ({e})".encode()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    log.warning("%s: backend answered %d after the stream had begun; sent as an error event", model.name,
                upstream.status)
    event = dialect.backend_error(body)
    if event is None:
        said = body["error"].get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) \
            else raw.decode("utf-8", "replace")[:2000]
        event = dialect.in_band(BackendUnreachable(
            f"{model.name}: the backend answered {upstream.status} {upstream.reason or ''}: {said}"))
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(event)
        await response.write_eof()
    return response
