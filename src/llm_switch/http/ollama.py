"""The Ollama API, for clients that speak only it (Copilot Chat's and JetBrains' Ollama providers,
Zed, Open WebUI's Ollama connection, the `ollama` libraries): each route is translated to the
backend's OpenAI routes (translate/ollama.py) and switched like any other request.

`keep_alive: 0` unloads the model once the answer is out; other values leave the switch's own
rules (idle_unload, the memory budget) in charge. `/api/ps` is the switch's state."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import repair
from ..config import Config, Model
from ..scheduling.policy import State
from ..scheduling.scheduler import Scheduler
from ..scheduling.snapshot import ModelSnapshot
from ..translate import ollama as tr
from .dialects import OLLAMA
from .keys import SCHEDULER
from .pipeline import Body, Call, ModelRoute, model_named, read_json
from .relay import upstream_headers
from .rewrite import Head, Rewrite, Transform, hold_whole, then

log = logging.getLogger(__name__)

# The Ollama version this answers as: some clients check it against the oldest they support.
OLLAMA_VERSION = "0.12.0"


def _name(config: Config, payload: Any) -> Any:
    """Ollama clients may add the default tag: `coder:latest` is `coder`."""
    name = payload.get("model") if isinstance(payload, dict) else None
    if isinstance(name, str) and config.resolve(name) is None and name.endswith(":latest"):
        name = name[: -len(":latest")]
    return name


def _details() -> dict:
    return {"parent_model": "", "format": "gguf", "family": "", "families": None, "parameter_size": "",
            "quantization_level": ""}


def _size(model: ModelSnapshot) -> tuple[int, int]:
    """(size, size_vram): measured where known, else the declared memory."""
    m = model.measured
    ram, vram = (m.ram or 0, m.vram or 0) if m else (0, 0)
    return (ram + vram) or (model.declared or 0), vram


# -- answers, translated ----------------------------------------------------------------------

def _translated(model: str, whole: Callable[[Any], dict], kind: str | None, repair_calls: bool,
                tools_offered: bool) -> Transform:
    """The backend's errors as `{"error": message}`, its SSE stream as NDJSON (`kind`), a whole
    answer through `whole`."""

    def transform(head: Head) -> Rewrite:
        if head.status == 200 and head.event_stream and kind is not None:
            ndjson = tr.NDJSONStream(kind, model)
            lines = Rewrite(ndjson.feed, ndjson.close, tr.NDJSON, ndjson.cut)
            if not repair_calls:
                return lines
            fixer = repair.StreamRepair(tools_offered)  # lifts calls written as text, as on /v1
            return then(Rewrite(fixer.feed, fixer.close), lines)
        return hold_whole(lambda held: _whole_answer(head.status, held, whole, repair_calls, tools_offered),
                          "application/json")

    return transform


def _whole_answer(status: int, held: bytes, whole: Callable[[Any], dict], repair_calls: bool,
                  tools_offered: bool) -> bytes:
    if status != 200:
        return json.dumps({"error": tr.error_message(held)}).encode()
    try:
        body = json.loads(held)
    except (ValueError, RecursionError):
        return json.dumps({"error": "the backend's answer is not JSON"}).encode()
    if repair_calls and isinstance(body, dict):
        repair.repair_completion(body, tools_offered)
    return json.dumps(whole(body), ensure_ascii=False).encode()


def _call(request: web.Request, model: Model, path: str, body: dict, whole: Callable[[Any], dict],
          kind: str | None, keep_alive: float | None) -> Call:
    """The translated request to send, its answer translated back; with keep_alive 0 the model
    is unloaded once the answer is out."""
    scheduler = request.app[SCHEDULER]
    transform = _translated(model.name, whole, kind if body.get("stream") else None, model.repair_tool_calls,
                            bool(body.get("tools")))
    send = {**{k: v for k, v in upstream_headers(request).items() if k.lower() != "content-type"},
            "Content-Type": "application/json"}
    after = (lambda: _unload(scheduler, model)) if keep_alive == 0 else None
    return Call(json.dumps(body, ensure_ascii=False).encode(), transform, path, send, after)


async def _unload(scheduler: Scheduler, model: Model) -> None:
    if await scheduler.unload([model.name]):
        log.info("%s: unloaded after the answer (keep_alive 0)", model.name)


async def _load_or_unload(request: web.Request, model: Model, keep_alive: float | None, kind: str) -> web.Response:
    """A request with nothing to answer: Ollama's way to load a model, or with keep_alive 0 to unload it."""
    scheduler = request.app[SCHEDULER]
    if keep_alive == 0:
        await _unload(scheduler, model)
        reason = "unload"
    else:
        await scheduler.load(model.name)
        reason = "load"
    out: dict[str, Any] = {"model": model.name, "created_at": tr.timestamp(time.time()), "done": True,
                           "done_reason": reason}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return web.json_response(out)


# -- routes -----------------------------------------------------------------------------------

async def _chat(request: web.Request, model: Model, payload: dict, _: Body) -> Call | web.Response:
    keep_alive = tr.keep_alive_seconds(payload.get("keep_alive"))
    if not payload.get("messages"):
        return await _load_or_unload(request, model, keep_alive, "chat")
    return _call(request, model, "/v1/chat/completions", tr.chat_request(payload, model.name),
                 lambda a: tr.chat_response(a, model.name, time.time()), "chat", keep_alive)


async def _generate(request: web.Request, model: Model, payload: dict, _: Body) -> Call | web.Response:
    keep_alive = tr.keep_alive_seconds(payload.get("keep_alive"))
    if not payload.get("prompt") and not payload.get("images"):
        return await _load_or_unload(request, model, keep_alive, "generate")
    path, body = tr.generate_request(payload, model.name)
    return _call(request, model, path, body, lambda a: tr.generate_response(a, model.name, time.time()),
                 "generate", keep_alive)


async def _embed(request: web.Request, model: Model, payload: dict, _: Body) -> Call:
    old = request.path == "/api/embeddings"
    whole = tr.embeddings_response if old else (lambda a: tr.embed_response(a, model.name))
    return _call(request, model, "/v1/embeddings", tr.embed_request(payload, model.name), whole, None,
                 tr.keep_alive_seconds(payload.get("keep_alive")))


chat = ModelRoute(OLLAMA, _chat, _name).serve
generate = ModelRoute(OLLAMA, _generate, _name).serve
embed = ModelRoute(OLLAMA, _embed, _name).serve


def _modified_at(config: Config) -> str:
    """When the model list last changed: the config file's time."""
    try:
        return tr.timestamp(os.stat(config.path).st_mtime) if config.path else tr.timestamp(0)
    except OSError:
        return tr.timestamp(0)


async def tags(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    since = _modified_at(scheduler.config)
    models = []
    for name, model in scheduler.config.models.items():
        models.append({"name": name, "model": name, "modified_at": since, "size": model.memory or 0,
                       "digest": "", "details": _details()})
    for name in scheduler.config.any_of:  # virtual models: a member serves
        models.append({"name": name, "model": name, "modified_at": since, "size": 0, "digest": "",
                       "details": _details()})
    return web.json_response({"models": models})


async def ps(request: web.Request) -> web.Response:
    """The models the switch runs (starting or ready), with Ollama's fields."""
    snap = request.app[SCHEDULER].snapshot()
    now, mono = time.time(), snap.at
    models = []
    for name, m in snap.models.items():
        if m.state not in (State.STARTING, State.READY):
            continue
        idle = m.idle_unload
        if idle is None:
            expires = tr.FOREVER
        else:
            idle_for = mono - m.idle_since if m.idle_since is not None else 0.0
            expires = tr.timestamp(now - idle_for + idle)
        size, vram = _size(m)
        models.append({"name": name, "model": name, "size": size, "digest": "", "details": _details(),
                       "expires_at": expires, "size_vram": vram})
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    config = request.app[SCHEDULER].config
    _, payload = await read_json(request)
    payload = payload if isinstance(payload, dict) else {}
    model = model_named(config, _name(config, {"model": payload.get("model") or payload.get("name")}))
    return web.json_response({
        "modelfile": "", "parameters": "", "template": "", "details": _details(),
        "model_info": {"general.architecture": "llama"},
        "capabilities": ["completion", "tools"],
        "modified_at": _modified_at(config),
        "llm_switch": {"model": model.name, "unit": model.unit, "aliases": list(model.aliases)},
    })


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


ROUTES = [
    web.get("/api/version", version),
    web.get("/api/tags", tags),
    web.get("/api/ps", ps),
    web.post("/api/show", show),
    web.post("/api/chat", chat),
    web.post("/api/generate", generate),
    web.post("/api/embed", embed),
    web.post("/api/embeddings", embed),
]
