"""One observation per request: the outermost middleware gives every request an `Observation`,
which the model routes and the relay fill in (the model, the wait, the first byte, the answer's
usage), and publishes a `RequestDone` on the event bus when the request ends. Its labels are
bounded (docs/design.md, "Metrics")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ..events import EventBus, RequestDone
from .usage import Usage, usage_of

log = logging.getLogger(__name__)

OTHER = "other"  # the route label of a request that matched no route
# OpenAI's endpoints under the catch-all `/v1/{tail}`: a fixed list, so that they keep their own label
API_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class Observation:
    """What one request did; filled in by the routes and the relay, read once it ended.

    The answer's usage is read from its last bytes only when asked for, which is after the answer
    went out (see `observe_requests`), so that parsing it and logging its line cost the client nothing."""

    __slots__ = ("t0", "model", "wait_began", "waited_s", "first_byte", "repaired", "_tail", "_streamed_s", "_usage")

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.model: str | None = None  # the configured name the request resolved to
        self.wait_began: float | None = None  # monotonic: when it had to wait for its model
        self.waited_s = 0.0
        self.first_byte: float | None = None  # monotonic: the backend's first byte of the answer
        self.repaired = 0  # tool calls repaired, in the history and the answer
        self._tail: bytes | None = None
        self._streamed_s: float | None = None
        self._usage: Usage | None = None

    def waiting(self) -> None:
        """The request has to wait for its model (a load, or its turn): `Scheduler.use`'s on_wait."""
        self.wait_began = time.monotonic()

    def repaired_more(self, n: int) -> None:
        self.repaired += n

    def answered(self, tail: bytes = b"", streamed_s: float | None = None, usage: Usage | None = None) -> None:
        """The answer ended with `tail` (its last bytes); `usage`, where the relay read it already."""
        self._tail, self._streamed_s, self._usage = tail, streamed_s, usage

    @property
    def usage(self) -> Usage | None:
        """The answer's usage, where it tells its completion tokens."""
        if self._usage is None and self._tail is not None:
            self._usage = usage_of(self._tail, self._streamed_s)
            self._tail = None
        u = self._usage
        return u if u is not None and u.completion_tokens is not None else None


OBSERVATION = web.RequestKey("observation", Observation)


def observed(request: web.Request) -> Observation | None:
    return request.get(OBSERVATION)


def route_label(request: web.Request) -> str:
    """The matched route's pattern (`/logs/{model}`), one of `API_PATHS`, or `other`: never the
    path a client made up."""
    resource = request.match_info.route.resource
    if resource is None:
        return OTHER
    return request.path if request.path in API_PATHS else resource.canonical


def observe_requests(events: Callable[[], EventBus | None]):
    """The outermost middleware: time each request and publish a `RequestDone` when it ends."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        obs = request[OBSERVATION] = Observation()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's number for it)
            raise
        finally:
            # the answer has gone out (the relay sends it itself): what follows costs the client nothing
            _done(request, obs, status, events())

    return middleware


def _done(request: web.Request, obs: Observation, status: int, bus: EventBus | None) -> None:
    """Log the answer's usage and publish the request's `RequestDone`."""
    u = obs.usage
    if u is not None:
        log.info("%s: %s", obs.model, u.text())
    if bus is None:
        return
    end = time.monotonic()
    u = u or Usage()
    bus.publish(RequestDone(
        obs.model, route_label(request), status, end - obs.t0,
        first_byte_s=obs.first_byte - obs.t0 if obs.first_byte is not None else None,
        waited_s=obs.waited_s, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        prompt_tps=u.prompt_tps, generation_tps=u.generation_tps, at=time.time(),
        repaired=obs.repaired, prompt_s=u.prompt_s, generation_s=u.generation_s))
