"""The one path of every model route: parse → resolve → authorize → repair → progress → switch →
relay. A route supplies only where the model's name is, its rewrites and its wire dialect
(docs/design.md, "One request pipeline")."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from ..config import Config, Model
from ..errors import BackendGone, BadRequest, ShuttingDown, UnknownModel
from ..observe.middleware import observed
from .auth import allow_model
from . import json_body
from .dialects import Dialect
from .keys import INFLIGHT, SCHEDULER
from .progress import Progress, progress_for
from .relay import relay
from .rewrite import Transform

log = logging.getLogger(__name__)

Body = bytes | AsyncIterable[bytes]


class Call(NamedTuple):
    """What a route sends its model and how the answer is changed on the way: `body`, the
    `transform` of the answer, the `path` (with query) and `headers` sent instead of the
    request's, and `after`, run once the answer is out."""

    body: Body
    transform: Transform | None = None
    path: str | None = None
    headers: dict[str, str] | None = None
    after: Callable[[], Awaitable[None]] | None = None


# a route's rewrites: the request (repaired, translated) to send, or an answer of its own
Rewrites = Callable[[web.Request, Model, Any, Body], Awaitable["Call | web.StreamResponse"]]


async def as_it_came(request: web.Request, model: Model, payload: Any, body: Body) -> Call:
    return Call(body)


def model_field(config: Config, payload: Any) -> Any:
    """Where most routes name the model: the JSON body's `model`."""
    return payload.get("model") if isinstance(payload, dict) else None


@dataclass(frozen=True)
class ModelRoute:
    """What a model route supplies; `serve` is its aiohttp handler."""

    dialect: Dialect
    rewrites: Rewrites = as_it_came
    model_name: Callable[[Config, Any], Any] = model_field

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """A JSON request: parse and resolve, then the rest of the pipeline (`to_model`)."""
        scheduler = request.app[SCHEDULER]
        config = scheduler.config  # the newest: a reload replaces it
        body, payload = await read_json(request)
        name = self.model_name(config, payload)
        if (chosen := scheduler.chosen(name)) != name:  # an any_of virtual model: a member serves
            payload, body = served_as(payload, chosen)
        return await self.to_model(request, model_named(config, chosen), payload, body)

    async def to_model(self, request: web.Request, model: Model, payload: Any, body: Body) -> web.StreamResponse:
        """Authorize, repair, progress, switch and relay, for a request whose model is found."""
        if (obs := observed(request)) is not None:
            obs.model = model.name
        allow_model(request, model)  # 403 before anything switches, for a key limited to other models
        call = await self.rewrites(request, model, payload, body)
        if isinstance(call, web.StreamResponse):
            return call  # answered without the backend
        progress = progress_for(request, model, payload, self.dialect)
        response = await progress.guard(_switch_and_relay(request, model, call, progress))
        if call.after is not None:
            if not response.prepared:  # a whole answer: send it before what follows
                await response.prepare(request)
                await response.write_eof()
            await call.after()
        return response


def served_as(payload: Any, name: Any) -> tuple[Any, bytes]:
    """The request naming the member of an `any_of` that serves it, so that the answer's `model`
    names that member too."""
    payload = {**payload, "model": name} if isinstance(payload, dict) else payload
    return payload, json.dumps(payload).encode()


def check_length(request: web.Request, config: Config) -> None:
    """413 at once for a declared body over max_body_bytes (before reading any of it)."""
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=config.max_body_bytes, actual_size=request.content_length)


async def read_json(request: web.Request) -> tuple[bytes, Any]:
    """The body as bytes and as parsed JSON, its memory bounded (json_body.py)."""
    return await json_body.read_json(request, request.app[SCHEDULER].config)


def model_named(config: Config, name: Any, where: str = "a JSON object with a string `model`") -> Model:
    """The configured model `name` names; 400 `missing_model` when it is no string, 404 when unknown."""
    if not isinstance(name, str):
        raise BadRequest(f"request body must be {where} naming a model (GET /v1/models lists those "
                         "this key may use)", "missing_model")
    model = config.resolve(name)
    if model is None:
        raise UnknownModel.named(name, config.known())
    return model


async def _switch_and_relay(request: web.Request, model: Model, call: Call, progress: Progress) -> web.StreamResponse:
    """Hold `model` running (switching to it if needed) while the relay sends it the request.
    While the switch stops, the request counts in flight: it gets `shutdown_grace` to finish,
    then a 503 (or its dialect's in-band error, once its stream began)."""
    inflight = request.app[INFLIGHT]
    if inflight.stopping:
        raise ShuttingDown("llm-switch is stopping; send the request again once it is back")
    with inflight.track():
        try:
            return await _relay_once_more_if_stopped(request, model, call, progress)
        except asyncio.CancelledError:
            if not inflight.stopping:
                raise  # the client left
            raise ShuttingDown("llm-switch stopped before this request was served (shutdown_grace); "
                               "send it again") from None


async def _relay_once_more_if_stopped(request: web.Request, model: Model, call: Call,
                                      progress: Progress) -> web.StreamResponse:
    """A refused connection to a unit stopped behind the switch's back starts it again, once; a
    streamed body only if none of it was sent (`Upload.started`)."""
    scheduler = request.app[SCHEDULER]
    try:
        return await _relay_in_use(request, model, call, progress)
    except BackendGone:
        if getattr(call.body, "started", False):
            raise
        if not await scheduler.forget_if_stopped(scheduler.models[model.name]):
            raise
        log.info("%s: %s was stopped outside the switch; starting it again", model.name, model.unit)
        return await _relay_in_use(request, model, call, progress)


async def _relay_in_use(request: web.Request, model: Model, call: Call, progress: Progress) -> web.StreamResponse:
    async with request.app[SCHEDULER].use(model, progress.on_wait):
        prepared = await progress.ready()
        return await relay(request, model, call.body, progress.dialect, progress.transform(call.transform),
                           path=call.path, send_headers=call.headers, prepared=prepared)
