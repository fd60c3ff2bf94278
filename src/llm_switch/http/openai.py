"""The model routes: anything under /v1 that names a model is switched to and relayed."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from .. import repair
from ..errors import BackendGone, BadRequest, UnknownModel
from ..observe.status import model_status
from ..scheduling.scheduler import Scheduler
from .keys import SCHEDULER
from .relay import relay, repair_tool_calls

log = logging.getLogger(__name__)


async def forward(request: web.Request) -> web.StreamResponse:
    scheduler = request.app[SCHEDULER]
    config = scheduler.config  # the newest: a reload replaces it
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=config.max_body_bytes, actual_size=request.content_length)
    body = await request.read()
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", "invalid_json") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be parsed", "invalid_json") from None
    name = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(name, str):
        raise BadRequest("request body must be a JSON object with a string `model` naming one of: "
                         + ", ".join(config.models), "missing_model")
    model = config.resolve(name)
    if model is None:
        raise UnknownModel.named(name, config.known())

    transform = None
    if model.repair_tool_calls and request.path.endswith("/chat/completions"):
        if names := repair.repair_request(payload):
            log.info("%s: repaired the arguments of %d tool call(s) in the request history: %s",
                     model.name, len(names), ", ".join(names))
            body = json.dumps(payload, ensure_ascii=False).encode()
        transform = repair_tool_calls(model, tools_offered=bool(payload.get("tools")))

    session = scheduler.backends.session
    try:
        async with scheduler.use(model):
            return await relay(request, session(model.url), model, body, transform)
    except BackendGone:
        # the unit may have been stopped behind our back: find out, and start it again once
        if not await scheduler.forget_if_stopped(scheduler.models[model.name]):
            raise
        log.info("%s: %s was stopped outside the switch; starting it again", model.name, model.unit)
        async with scheduler.use(model):
            return await relay(request, session(model.url), model, body, transform)


def _model_entry(scheduler: Scheduler, name: str) -> dict:
    status = model_status(scheduler.models[name])
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(scheduler.config.models[name].aliases), "unit": status["unit"],
            "state": status["state"], "memory": status["memory"]}


async def list_models(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    return web.json_response({"object": "list", "data": [_model_entry(scheduler, n) for n in scheduler.config.models]})


async def get_model(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    model = scheduler.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel.named(request.match_info["model"], scheduler.config.known())
    return web.json_response(_model_entry(scheduler, model.name))


ROUTES = [
    web.get("/v1/models", list_models),
    web.get("/v1/models/{model:.+}", get_model),
    web.post("/v1/{tail:.*}", forward),
]
