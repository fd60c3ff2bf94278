"""Reading a JSON request body with its memory bounded.

Parsed, JSON takes far more memory than its bytes: `[{},{},…]` costs ~25 times its size. So a
JSON body has its own limit, `max_json_bytes` (never more than `max_body_bytes`), and bodies over
LARGE are read and parsed only LARGE_AT_ONCE at a time; the others wait for their turn (at most
PERMIT_WAIT, then a 503 with Retry-After) without reading their bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..config import Config
from ..errors import BadRequest, QueueFull, RequestTooLarge

LARGE = 1 << 20  # bytes: a body over this waits for a permit
LARGE_AT_ONCE = 2
PERMIT_WAIT = 30.0  # s
LARGE_BODIES = web.AppKey("large_json_bodies", asyncio.Semaphore)


def attach(app: web.Application) -> None:
    app[LARGE_BODIES] = asyncio.Semaphore(LARGE_AT_ONCE)


def limit_of(config: Config) -> tuple[int, str]:
    """The limit of a JSON body, and the config key that sets it."""
    if config.max_body_bytes < config.max_json_bytes:
        return config.max_body_bytes, "max_body_bytes"
    return config.max_json_bytes, "max_json_bytes"


async def read_json(request: web.Request, config: Config) -> tuple[bytes, Any]:
    """The body as bytes and as parsed JSON; 413 past the limit, 400 `invalid_json` when it is no JSON."""
    limit, key = limit_of(config)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit, key)
    async with _permit(request, declared) as take:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit, key)
            if size > LARGE:
                await take()  # a body that did not say its length: it waits once it is large
            chunks.append(chunk)
        body = b"".join(chunks)
        del chunks
        return body, _parse(body)


@contextlib.asynccontextmanager
async def _permit(request: web.Request, declared: int | None) -> AsyncIterator[Any]:
    permits = request.app[LARGE_BODIES]
    held = False

    async def take() -> None:
        nonlocal held
        if held:
            return
        try:
            await asyncio.wait_for(permits.acquire(), PERMIT_WAIT)
        except TimeoutError:
            raise QueueFull(f"{LARGE_AT_ONCE} JSON bodies over {LARGE >> 20} MiB are being read already, for "
                            f"{PERMIT_WAIT:.0f} s; send the request again", retry_after=1) from None
        held = True

    try:
        if declared is not None and declared > LARGE:
            await take()
        yield take
    finally:
        if held:
            permits.release()


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", "invalid_json") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be parsed", "invalid_json") from None


def _too_large(limit: int, key: str) -> RequestTooLarge:
    return RequestTooLarge(f"JSON request body is larger than the limit of {limit} bytes ({key} in config.yaml)")
