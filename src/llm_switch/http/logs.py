"""A model's log: `GET /logs/{model}` (its unit's journal lines, `?lines=N`), `?follow=1` streams
new lines as they are written. Plain text, one line each, as `journalctl -o short-iso` prints them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from ..errors import BadRequest, UnknownModel
from ..units.journal import journal_follow, journal_tail
from .keys import SCHEDULER

log = logging.getLogger(__name__)

LIVE = web.AppKey("live_streams", set)  # handler tasks of endless streams, ended when the switch stops
MAX_LINES = 10000


async def logs(request: web.Request) -> web.StreamResponse:
    scheduler = request.app[SCHEDULER]
    model = scheduler.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel.named(request.match_info["model"], scheduler.config.known())
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise BadRequest("lines: must be a whole number") from None
    lines = max(0, min(lines, MAX_LINES))
    if request.query.get("follow", "") not in ("1", "true", "yes"):
        got = await journal_tail(model.unit, lines, timeout=10, output="short-iso")
        return web.Response(text="".join(line + "\n" for line in got), content_type="text/plain",
                            headers={"X-Unit": model.unit})
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff", "X-Accel-Buffering": "no",
                                           "X-Unit": model.unit})
    await response.prepare(request)
    with live(request), contextlib.suppress(ConnectionError, asyncio.CancelledError):
        async with contextlib.aclosing(journal_follow(model.unit, lines)) as followed:  # journalctl ends with it
            async for line in followed:
                await response.write(line.encode() + b"\n")
    return response


@contextlib.contextmanager
def live(request: web.Request):
    """Count the handler among the endless streams that the switch ends when it stops."""
    task = asyncio.current_task()
    streams = request.app[LIVE]
    streams.add(task)
    try:
        yield
    finally:
        streams.discard(task)


async def end_live_streams(app: web.Application) -> None:
    """on_shutdown: endless streams (followed logs, the page's events) end before the runner waits."""
    for task in list(app[LIVE]):
        task.cancel()


ROUTES = [web.get("/logs/{model}", logs)]
