"""The live web page: `GET /ui` (one static page, no build step) and `GET /ui/events`, an event
stream fed by the event bus: a `snapshot` first (the /status snapshot and the recent requests),
then `models` on every state change, switch and measurement, `progress` each second of a load,
and `request` for each model request answered.

The page itself (ui.html, ui.js, ui.css) holds no data and needs no key; everything it shows
comes from /ui/events, /logs, /load and /unload, which it calls with the key it was opened with
(`/ui#key=…`, never the query, or pasted in its key field; kept in the tab's sessionStorage,
sent as `Authorization: Bearer`; fetch reads the event streams, as EventSource cannot send
headers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from pathlib import Path

from aiohttp import web

from ..events import EventBus, LoadProgress, MemoryMeasured, RequestDone, StateChanged, SwitchDone
from ..observe import status
from .keys import SCHEDULER
from .logs import live

STATIC = Path(__file__).with_name("static")
RECENT = web.AppKey("ui_recent_requests", deque)
EVENTS = web.AppKey("ui_events", EventBus)
PING = 15.0  # s between keep-alive comments


def attach(app: web.Application, events: EventBus) -> None:
    """Keep the recent model requests for the page's first view."""
    recent: deque = deque(maxlen=100)
    app[RECENT] = recent
    app[EVENTS] = events
    events.subscribe(RequestDone, lambda e: recent.append(e) if e.model is not None else None)


# no inline script or style, no framing (clickjacking), no key in a Referer, no type sniffing
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                    "Cache-Control": "no-cache"}
ASSETS = {"/ui": ("ui.html", "text/html"), "/ui/ui.js": ("ui.js", "text/javascript"),
          "/ui/ui.css": ("ui.css", "text/css")}


async def page(request: web.Request) -> web.Response:
    """The page and its script and style sheet, each a file of its own (the CSP allows no inline code)."""
    name, content_type = ASSETS[request.path]
    return web.Response(body=(STATIC / name).read_bytes(), content_type=content_type, charset="utf-8",
                        headers=SECURITY_HEADERS)


def _sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def events_stream(request: web.Request) -> web.StreamResponse:
    queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

    def put(event) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a page that cannot keep up misses some
            queue.put_nowait(event)

    unsubscribe = request.app[EVENTS].subscribe(
        (StateChanged, SwitchDone, MemoryMeasured, LoadProgress, RequestDone), put)
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        scheduler = request.app[SCHEDULER]
        await response.write(_sse("snapshot", {"status": status.snapshot(scheduler.snapshot()),
                                               "requests": [e.as_json() for e in request.app[RECENT]]}))
        with live(request), contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), PING)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if isinstance(event, RequestDone):
                    if event.model is not None:  # with every model's requests in flight and waiting now
                        models = request.app[SCHEDULER].snapshot().models
                        counts = {n: [m.in_flight, m.waiting] for n, m in models.items()}
                        await response.write(_sse("request", {**event.as_json(), "counts": counts}))
                elif isinstance(event, LoadProgress):
                    await response.write(_sse("progress", {"model": event.model, "elapsed_s": round(event.elapsed_s, 1)}))
                else:
                    snap = status.snapshot(request.app[SCHEDULER].snapshot())
                    await response.write(_sse("models", {"models": snap["models"], "switches": snap["switches"]}))
        return response
    finally:
        unsubscribe()


ROUTES = [*(web.get(path, page) for path in ASSETS), web.get("/ui/events", events_stream)]
