"""The model routes: anything under /v1 that names a model is switched to and relayed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from aiohttp import web

from .. import repair
from ..config import AnyOf, Model
from ..errors import UnknownModel
from ..observe.middleware import observed
from ..scheduling.scheduler import Scheduler
from . import auth
from .dialects import OPENAI
from .keys import SCHEDULER
from .pipeline import Body, Call, ModelRoute
from .rewrite import Head, Rewrite, Transform, hold_whole

log = logging.getLogger(__name__)


def repair_tool_calls(model: Model, tools_offered: bool,
                      on_repair: Callable[[int], None] | None = None) -> Transform:
    """A transform that repairs tool calls in a successful chat completion: streamed (text flows
    at once, each call's arguments are sent whole once complete) or not. `on_repair(n)` is told
    how many calls were repaired."""

    def transform(head: Head) -> Rewrite | None:
        if head.status != 200:
            return None  # errors pass through untouched
        if head.event_stream:
            stream = repair.StreamRepair(tools_offered)

            def close_stream() -> bytes:
                tail = stream.close()
                _log_repairs(model, stream.repaired, "stream", on_repair)
                return tail

            return Rewrite(stream.feed, close_stream)
        if head.content_type != "application/json":
            return None
        return hold_whole(lambda held: _repaired_completion(model, held, tools_offered, on_repair))

    return transform


def _repaired_completion(model: Model, held: bytes, tools_offered: bool,
                         on_repair: Callable[[int], None] | None) -> bytes:
    # an answer with no tool call in any form goes out as it came, unparsed
    if b"tool_call" not in held and b"function" not in held:
        return held
    try:
        body = json.loads(held)
    except (ValueError, RecursionError):
        return held
    if not isinstance(body, dict):
        return held
    names = repair.repair_completion(body, tools_offered)
    _log_repairs(model, names, "answer", on_repair)
    return json.dumps(body, ensure_ascii=False).encode()


def _log_repairs(model: Model, names: list[str], where: str, on_repair: Callable[[int], None] | None = None) -> None:
    if names and on_repair is not None:
        on_repair(len(names))
    if names:
        log.info("%s: repaired the arguments of %d tool call(s) in the %s: %s",
                 model.name, len(names), where, ", ".join(names))


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
    status = scheduler.snapshot().models[name].as_json(with_cache=False)
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(scheduler.config.models[name].aliases), "unit": status["unit"],
            "state": status["state"], "memory": status["memory"]}


async def list_models(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    names = auth.visible(request, scheduler.config.models)  # a key limited to some models sees those
    names = [n for n in names if not scheduler.config.models[n].unlisted]  # served, not listed
    groups = [_any_of_entry(g) for g in scheduler.config.any_of.values() if auth.visible(request, g.members)]
    return web.json_response({"object": "list", "data": [_model_entry(scheduler, n) for n in names] + groups})


def _any_of_entry(group: AnyOf) -> dict:
    """A virtual model: its members instead of a unit and a state."""
    return {"id": group.name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(group.aliases), "any_of": list(group.members)}


async def get_model(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    if (group := scheduler.config.group(request.match_info["model"])) is not None:
        return web.json_response(_any_of_entry(group))
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
