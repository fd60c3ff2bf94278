"""What every model route does: read the body, find the model it names, switch to it, relay.

The OpenAI, Anthropic, Ollama and native routes differ only in where the model's name is and
how the answer is translated; this is the part they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from typing import Any

from aiohttp import web

from ..backends.upstream import Answer
from ..config import Config, Model
from ..errors import BackendGone, BadRequest, ShuttingDown, UnknownModel
from . import json_body
from .auth import allow_model
from .keys import INFLIGHT, SCHEDULER
from .relay import Rewrite, relay

log = logging.getLogger(__name__)

Transform = Callable[[Answer], Rewrite | None]


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


async def switch_and_relay(request: web.Request, model: Model, body: bytes | AsyncIterable[bytes],
                           transform: Transform | None = None, progress: Any = None,
                           **relay_args: Any) -> web.StreamResponse:
    """Hold `model` running (switching to it if needed) while `relay` sends it the request.

    A refused connection to a unit stopped behind the switch's back starts it again, once. A
    streamed body is retried only if none of it was sent (`Upload.started`). `progress` (an
    http.progress.Progress) is told when the request waits and hands the stream it opened to the
    relay. While the switch stops, the request counts in flight: it gets `shutdown_grace` to
    finish, then a 503 (or an error event, once its stream began)."""
    inflight = request.app[INFLIGHT]
    if inflight.stopping:
        raise ShuttingDown("llm-switch is stopping; send the request again once it is back")
    with inflight.track():
        try:
            return await _switch_and_relay(request, model, body, transform, progress, **relay_args)
        except asyncio.CancelledError:
            if not inflight.stopping:
                raise  # the client left
            raise ShuttingDown("llm-switch stopped before this request was served (shutdown_grace); "
                               "send it again") from None


async def _switch_and_relay(request: web.Request, model: Model, body: bytes | AsyncIterable[bytes],
                            transform: Transform | None, progress: Any, **relay_args: Any) -> web.StreamResponse:
    allow_model(request, model)  # 403 before anything switches, for a key limited to other models
    scheduler = request.app[SCHEDULER]
    on_wait = progress.on_wait if progress is not None else None
    try:
        async with scheduler.use(model, on_wait):
            if progress is not None:
                relay_args["prepared"] = await progress.ready()
            return await relay(request, model, body, transform, **relay_args)
    except BackendGone:
        if getattr(body, "started", False):
            raise
        # the unit may have been stopped behind our back: find out, and start it again once
        if not await scheduler.forget_if_stopped(scheduler.models[model.name]):
            raise
        log.info("%s: %s was stopped outside the switch; starting it again", model.name, model.unit)
        async with scheduler.use(model, on_wait):
            if progress is not None:
                relay_args["prepared"] = await progress.ready()
            return await relay(request, model, body, transform, **relay_args)
