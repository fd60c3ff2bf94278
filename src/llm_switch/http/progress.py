"""Loading progress: a streamed request that has to wait for its model (a load, or its turn in the
queue) gets its event stream opened at once and is told what it waits for.

- `reasoning` (the default for chat completions): well-formed `chat.completion.chunk` events
  whose delta carries the progress in `reasoning_content`, so clients that show thinking (Open
  WebUI, Roo Code) show it there and never as answer text. The answer's own chunks follow in the
  same stream with the same `id`, `created` and `model`.
- `comment`: SSE comment lines (`: loading coder … 12 s`), which every client ignores; what any
  other streamed route gets while it waits, whatever the setting.
- `off`: nothing until the answer (chat completions only).

What it says: the position in the queue; which model is stopping (and whether its requests are
still finishing); the load's phase where llama-server logs one (its journal lines: model file,
tensors, KV cache, warm-up), else the seconds so far; then "ready in N s". A line goes out when
that changes, else every REPEAT seconds. A start that fails ends the stream with an error in the
route's dialect (docs/design.md, "One request pipeline"). Requests that need not wait, requests
that are not streamed, and Ollama's streams (NDJSON has no line to keep one alive) are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable

from aiohttp import web

from ..config import Model
from ..errors import ShuttingDown, SwitchError
from ..events import LoadProgress, StateChanged
from ..observe.middleware import observed
from ..repair.sse import Event, SSEParser, format_event
from .dialects import Dialect
from .keys import INFLIGHT, SCHEDULER
from .rewrite import Head, Rewrite, Transform, then

log = logging.getLogger(__name__)

TICK = 1.0  # s between looks at what the request waits for
REPEAT = 5.0  # s: the same line again after this long (the seconds so far), a keep-alive too


class Progress:
    """One streamed request's progress; `on_wait` goes to `Scheduler.use`, `ready()` hands the
    opened stream to the relay (None when the request never waited)."""

    def __init__(self, request: web.Request, model: Model, mode: str, name: str, dialect: Dialect) -> None:
        self.request, self.model, self.mode, self.name, self.dialect = request, model, mode, name, dialect
        self.id, self.created = "", 0  # set once progress starts: the answer's chunks get them too
        self.response: web.StreamResponse | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._since = 0.0
        self._sent_role = False

    @property
    def started(self) -> bool:
        return self.response is not None

    # -- for the pipeline --------------------------------------------------------------------------

    def on_wait(self) -> None:
        if (obs := observed(self.request)) is not None:
            obs.waiting()
        if self.mode == "off" or (self._task is not None and not self._task.done()):
            return
        self._since = time.monotonic()
        self._stopping = False
        if not self.id:
            self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"llm-switch progress ({self.model.name})")

    async def ready(self) -> web.StreamResponse | None:
        """The model serves: stop telling, say so, hand over the stream (None if none was opened)."""
        if self._task is None:
            return None
        await self._halt()
        if self.response is not None:
            m = self.request.app[SCHEDULER].snapshot().models.get(self.model.name)
            waited = time.monotonic() - self._since
            if m is not None and m.load_s is not None and m.ready_at >= self._since:
                text = f"{self.name} ready in {m.load_s:.1f} s"
            else:
                text = f"{self.name} ready after {waited:.1f} s"
            await self._send(text)
        return self.response

    async def fail(self, error: SwitchError) -> web.StreamResponse:
        """End the opened stream with the error as an event (the status line is gone already)."""
        await self._halt()
        assert self.response is not None
        log.info("%s: streamed request ended with an error event: %s", self.model.name, error.message.splitlines()[0])
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.response.write(self.dialect.in_band(error))
            await self.response.write_eof()
        return self.response

    async def guard(self, work: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        """Run the switch and relay; an error once the stream is open goes into it as an event."""
        try:
            return await work
        except SwitchError as e:
            await self._halt()  # decides whether the stream was opened
            if not self.started:
                raise
            return await self.fail(e)
        except asyncio.CancelledError:
            await self._halt()
            if not self.started or not self.request.app[INFLIGHT].stopping:
                raise  # the client left
            return await self.fail(ShuttingDown(f"{self.model.name}: llm-switch stopped before the answer was "
                                                "complete (shutdown_grace); send the request again"))
        finally:
            await self._halt()

    def transform(self, inner: Transform | None) -> Transform | None:
        """`inner`, then (where progress went out as chunks) the answer's id, created and model
        set to those of the progress chunks."""
        if self.mode == "off":
            return inner  # nothing goes out before the answer

        def transform(head: Head) -> Rewrite | None:
            rewrite = inner(head) if inner is not None else None
            if not (self.started and self.mode == "reasoning" and head.status == 200 and head.event_stream):
                return rewrite
            same = _SameIds(self.id, self.created, self.name)
            return then(rewrite, Rewrite(same.feed, same.close))

        return transform

    # -- the stream -----------------------------------------------------------------------------

    async def _run(self) -> None:
        events = self.request.app[SCHEDULER].events
        unsubscribe = events.subscribe((StateChanged, LoadProgress), lambda _: self._wake.set())
        try:
            if self.response is None:
                if self._stopping:
                    return  # admitted before this task ran: no progress to tell
                response = web.StreamResponse(status=200, headers={"X-LLM-Switch-Model": self.model.name,
                    "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
                await response.prepare(self.request)
                self.response = response
            last, sent_at = None, 0.0
            while not self._stopping:
                what, seconds = await self._what()
                now = time.monotonic()
                if self._stopping:
                    break
                if what != last or now - sent_at >= REPEAT:
                    await self._send(f"{what} … {seconds:.0f} s")
                    last, sent_at = what, now
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK)
        except (ConnectionError, RuntimeError) as e:
            log.info("%s: client went away while waiting for the model (%s)", self.model.name, e)
        finally:
            unsubscribe()

    async def _halt(self) -> None:
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self._task

    async def _send(self, text: str) -> None:
        assert self.response is not None
        if self.mode == "reasoning":
            delta: dict = {"reasoning_content": text + "\n"}
            if not self._sent_role:
                delta = {"role": "assistant", **delta}
                self._sent_role = True
            chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            data = b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"
        else:
            data = self.dialect.keep_alive(text) or b""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.response.write(data)

    async def _what(self) -> tuple[str, float]:
        """What the request waits for now, and for how many seconds."""
        waited = time.monotonic() - self._since
        return await self.request.app[SCHEDULER].waiting_for(self.model.name, self.name, waited)


class _SameIds:
    """Sets `id`, `created` and `model` in each chunk of an event stream."""

    def __init__(self, id_: str, created: int, model: str) -> None:
        self._parser = SSEParser()
        self._fields = {"id": id_, "created": created, "model": model}

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(e) for e in self._parser.feed(data)) if data else b""

    def close(self) -> bytes:
        return b"".join(self._event(e) for e in self._parser.close())

    def _event(self, e: Event) -> bytes:
        if not e.complete or e.data is None or not e.data.startswith("{"):
            return e.raw
        try:
            chunk = json.loads(e.data)
        except (ValueError, RecursionError):
            return e.raw
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return e.raw  # an error event, say: as it came
        chunk.update(self._fields)
        return format_event(json.dumps(chunk, ensure_ascii=False), e.eol, e.fields)


def progress_for(request: web.Request, model: Model, payload: object, dialect: Dialect) -> Progress:
    """The progress a request gets while it waits: as configured for a streamed chat completion,
    keep-alive lines for any other stream in a dialect that has them; a request that is not
    streamed only has its wait noted."""
    payload = payload if isinstance(payload, dict) else {}
    if payload.get("stream") is not True or dialect.keep_alive("") is None:
        mode = "off"  # (an Ollama stream has no line its client would ignore)
    elif request.path.endswith("/chat/completions"):
        mode = model.loading_progress
    else:
        mode = "comment"
    name = payload.get("model") if isinstance(payload.get("model"), str) else model.name
    return Progress(request, model, mode, name, dialect)
