"""Forwarding a request to the model's backend, streaming the answer back as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import NamedTuple

from aiohttp import web
from yarl import URL

from .. import repair
from ..backends.upstream import Answer, BrokenOff, CannotConnect, NoAnswer, send
from ..config import Model
from ..errors import BackendGone, BackendUnreachable, ShuttingDown
from ..observe.metrics import observed, usage_of
from .errors import ANTHROPIC_PATHS, in_band_error
from .keys import INFLIGHT

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1 connection-specific headers, plus the framing each hop sets itself
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# compression is pointless on loopback and would hide the bytes from tool-call repair
_NOT_UPSTREAM = HOP_BY_HOP | {"accept-encoding"}
# a client's key is for the switch alone: never sent on (see auth.py)
_CLIENT_KEYS = frozenset({"authorization", "x-api-key"})
_NOT_FORWARDED = _NOT_UPSTREAM | _CLIENT_KEYS


class Rewrite(NamedTuple):
    """How a successful answer's bytes are changed on the way: `feed` each chunk, `close` at the end;
    `content_type`, when set, replaces the backend's (a translated answer)."""

    feed: Callable[[bytes], bytes]
    close: Callable[[], bytes]
    content_type: str | None = None


def upstream_headers(request: web.Request) -> dict[str, str]:
    """The request's headers to send on: no hop-by-hop ones, no client key (routes that send other
    headers start from these)."""
    return {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}


def is_event_stream(resp: Answer) -> bool:
    return resp.content_type == "text/event-stream"


async def relay(request: web.Request, model: Model, body: bytes | AsyncIterable[bytes],
                transform: Callable[[Answer], Rewrite | None] | None = None,
                *, path: str | None = None, send_headers: dict[str, str] | None = None,
                prepared: web.StreamResponse | None = None) -> web.StreamResponse:
    """Send `body` (bytes, or chunks streamed as they come) to the model's backend and relay the
    answer chunk by chunk.

    `transform` may rewrite a successful answer on the way (tool-call repair, a translation): an
    event stream chunk by chunk, any other body whole. Without it the relay is byte-transparent.
    `path` (with query) replaces the request's, `send_headers` the headers sent upstream.
    `prepared` is an event stream already sent to the client (loading progress): the answer's
    events follow in it, and a backend's error becomes an error event."""
    obs = observed(request)
    if obs is not None:
        obs.model = model.name
        if obs.wait_began is not None:
            obs.waited_s = time.monotonic() - obs.wait_began
    target = request.rel_url.raw_path_qs if path is None else URL(path).raw_path_qs
    headers = upstream_headers(request) if send_headers is None else send_headers
    if model.backend_api_key:
        headers = {**headers, "Authorization": f"Bearer {model.backend_api_key}"}
    try:
        upstream = await send(model.url, request.method, target, headers, body)
    except CannotConnect as e:
        raise BackendGone(f"{model.name}: cannot connect to {model.url} ({e})") from None
    except (NoAnswer, OSError) as e:
        raise BackendUnreachable(f"{model.name}: {model.url} did not answer ({e})") from None

    async with upstream:
        rewrite = transform(upstream) if transform else None
        headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
        if obs is not None and obs.waited_s:
            headers.append(("X-LLM-Switch-Waited-Seconds", f"{obs.waited_s:.2f}"))
        if rewrite and rewrite.content_type:
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("Content-Type", rewrite.content_type))
        if prepared is not None and (upstream.status != 200 or not is_event_stream(upstream)):
            return await _error_in_stream(request, prepared, model, upstream)
        if rewrite and not is_event_stream(upstream):
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

        if prepared is not None:
            response = prepared
        else:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if upstream.length is not None and rewrite is None:  # only where a length framed the body
                response.content_length = upstream.length
            await response.prepare(request)
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
            # the switch stops and shutdown_grace is over: end the answer visibly, never silently
            upstream.close()
            if not is_event_stream(upstream):
                request.transport and request.transport.close()
                return response
            error = ShuttingDown(f"{model.name}: llm-switch stopped before the answer was complete "
                                 "(shutdown_grace); send the request again")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
                await response.write_eof()
            return response
        except ConnectionResetError:
            log.info("%s: client went away; closing the request to the backend", model.name)
            upstream.close()
            return response
        except BrokenOff as e:
            # the status line is gone already: tell an SSE client in-band, cut any other one
            # visibly (its body stays short of Content-Length or the final chunk)
            log.warning("%s: backend broke off its answer: %s", model.name, e)
            if is_event_stream(upstream):
                if rewrite and (tail := rewrite.close()):
                    await response.write(tail)  # tool calls held so far, repaired
                error = BackendUnreachable(f"{model.name}: the backend broke off its answer ({e})")
                await response.write(in_band_error(request.path, error))
            else:
                request.transport and request.transport.close()
                return response
        finally:
            # also when the client hung up as soon as it had the answer's end, before the backend's EOF
            if obs is not None and last:
                obs.first_byte = first
                if upstream.status == 200:
                    obs.answered(b"".join(last), time.monotonic() - first)
        await response.write_eof()
        return response


async def _error_in_stream(request: web.Request, response: web.StreamResponse, model: Model,
                           upstream: Answer) -> web.StreamResponse:
    """The backend answered an error (or no event stream) after the client's stream had begun:
    one OpenAI-shaped error event, with the backend's own error where it sent one."""
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
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and request.path not in ANTHROPIC_PATHS:
        event = b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"  # the backend's own, as it is
    else:
        said = body["error"].get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) \
            else raw.decode("utf-8", "replace")[:2000]
        event = in_band_error(request.path, BackendUnreachable(
            f"{model.name}: the backend answered {upstream.status} {upstream.reason or ''}: {said}"))
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(event)
        await response.write_eof()
    return response


def repair_tool_calls(model: Model, tools_offered: bool,
                      on_repair: Callable[[int], None] | None = None) -> Callable[[Answer], Rewrite | None]:
    """A `transform` for `relay` that repairs tool calls in a successful chat completion: streamed
    (text flows at once, each call's arguments are sent whole once complete) or not. `on_repair(n)`
    is told how many calls were repaired."""

    def transform(upstream: Answer) -> Rewrite | None:
        if upstream.status != 200:
            return None  # errors pass through untouched
        if is_event_stream(upstream):
            stream = repair.StreamRepair(tools_offered)

            def close_stream() -> bytes:
                tail = stream.close()
                _log_repairs(model, stream.repaired, "stream", on_repair)
                return tail

            return Rewrite(stream.feed, close_stream)
        if upstream.content_type != "application/json":
            return None
        held = bytearray()

        def close_body() -> bytes:
            # an answer with no tool call in any form goes out as it came, unparsed
            if b"tool_call" not in held and b"function" not in held:
                return bytes(held)
            try:
                body = json.loads(held)
            except (ValueError, RecursionError):
                return bytes(held)
            if not isinstance(body, dict):
                return bytes(held)
            names = repair.repair_completion(body, tools_offered)
            _log_repairs(model, names, "answer", on_repair)
            return json.dumps(body, ensure_ascii=False).encode()

        return Rewrite(lambda chunk: held.extend(chunk) or b"", close_body)

    return transform


def _log_repairs(model: Model, names: list[str], where: str, on_repair: Callable[[int], None] | None = None) -> None:
    if names and on_repair is not None:
        on_repair(len(names))
    if names:
        log.info("%s: repaired the arguments of %d tool call(s) in the %s: %s",
                 model.name, len(names), where, ", ".join(names))
