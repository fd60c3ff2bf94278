"""The model routes: anything under /v1 that names a model is switched to and relayed."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from .. import repair
from ..config import Model
from ..errors import UnknownModel
from ..observe.metrics import observed
from ..observe.status import model_status
from ..scheduling.scheduler import Scheduler
from . import auth
from .dialects import OPENAI
from .keys import SCHEDULER
from .pipeline import Body, Call, ModelRoute
from .relay import repair_tool_calls

log = logging.getLogger(__name__)


async def _repair(request: web.Request, model: Model, payload: dict, body: Body) -> Call:
    """A chat completion's tool calls repaired, in the history sent and in the answer."""
    if not (model.repair_tool_calls and request.path.endswith("/chat/completions")):
        return Call(body)
    obs = observed(request)
    if names := repair.repair_request(payload):
        log.info("%s: repaired the arguments of %d tool call(s) in the request history: %s",
                 model.name, len(names), ", ".join(names))
        body = json.dumps(payload, ensure_ascii=False).encode()
        if obs is not None:
            obs.repaired += len(names)
    return Call(body, repair_tool_calls(model, tools_offered=bool(payload.get("tools")),
                                        on_repair=obs.repaired_more if obs is not None else None))


forward = ModelRoute(OPENAI, _repair).serve


def _model_entry(scheduler: Scheduler, name: str) -> dict:
    status = model_status(scheduler.models[name])
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(scheduler.config.models[name].aliases), "unit": status["unit"],
            "state": status["state"], "memory": status["memory"]}


async def list_models(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    names = auth.visible(request, scheduler.config.models)  # a key limited to some models sees those
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
