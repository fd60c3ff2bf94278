"""The model routes: anything under /v1 that names a model is switched to and relayed."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from .. import repair
from ..errors import UnknownModel
from ..scheduling.scheduler import Scheduler
from . import auth
from ..observe.middleware import observed
from .keys import SCHEDULER
from .progress import progress_for
from .proxy import model_named, read_json, switch_and_relay
from .relay import repair_tool_calls

log = logging.getLogger(__name__)


async def forward(request: web.Request) -> web.StreamResponse:
    config = request.app[SCHEDULER].config  # the newest: a reload replaces it
    body, payload = await read_json(request)
    model = model_named(config, payload.get("model") if isinstance(payload, dict) else None)

    obs = observed(request)
    if obs is not None:
        obs.model = model.name
    chat = request.path.endswith("/chat/completions")
    transform = None
    if model.repair_tool_calls and chat:
        if names := repair.repair_request(payload):
            log.info("%s: repaired the arguments of %d tool call(s) in the request history: %s",
                     model.name, len(names), ", ".join(names))
            body = json.dumps(payload, ensure_ascii=False).encode()
            if obs is not None:
                obs.repaired += len(names)
        transform = repair_tool_calls(model, tools_offered=bool(payload.get("tools")),
                                      on_repair=obs.repaired_more if obs is not None else None)
    progress = progress_for(request, model, payload, chat)
    return await progress.guard(switch_and_relay(request, model, body, progress.transform(transform), progress))


def _model_entry(scheduler: Scheduler, name: str) -> dict:
    status = scheduler.snapshot().models[name].as_json(with_cache=False)
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(scheduler.config.models[name].aliases), "unit": status["unit"],
            "state": status["state"], "memory": status["memory"]}


async def list_models(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    names = auth.visible(request, scheduler.config.models)  # a key limited to some models sees those
    names = [n for n in names if not scheduler.config.models[n].unlisted]  # served, not listed
    return web.json_response({"object": "list", "data": [_model_entry(scheduler, n) for n in names]})


async def get_model(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    model = scheduler.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel.named(request.match_info["model"], scheduler.config.known())
    auth.allow_model(request, model)
    return web.json_response(_model_entry(scheduler, model.name))


ROUTES = [
    web.get("/v1/models", list_models),
    web.get("/v1/models/{model:.+}", get_model),
    web.post("/v1/{tail:.*}", forward),
]
