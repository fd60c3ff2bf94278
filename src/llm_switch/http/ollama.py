"""The Ollama API, for clients that speak only it (Copilot Chat's and JetBrains' Ollama providers,
Zed, Open WebUI's Ollama connection, the `ollama` libraries): each route is translated to the
backend's OpenAI routes (http/ollama_translate.py) and switched like any other request.

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
from ..backends.upstream import Answer
from ..config import Config, Model
from ..scheduling.policy import State
from ..scheduling.scheduler import Scheduler
from ..scheduling.snapshot import ModelSnapshot
from . import ollama_translate as tr
from .keys import SCHEDULER
from .proxy import model_named, read_json, switch_and_relay
from .relay import Rewrite, is_event_stream, upstream_headers

log = logging.getLogger(__name__)

# The Ollama version this answers as: some clients check it against the oldest they support.
OLLAMA_VERSION = "0.12.0"


def _resolve(config: Config, name: Any) -> Model:
    """Ollama clients may add the default tag: `coder:latest` is `coder`."""
    if isinstance(name, str) and config.resolve(name) is None and name.endswith(":latest"):
        name = name[: -len(":latest")]
    return model_named(config, name, "a JSON object with a string `model`")


async def _read(request: web.Request) -> tuple[dict, Model]:
    """The request's JSON object and the model it names."""
    _, payload = await read_json(request)
    payload = payload if isinstance(payload, dict) else {}
    return payload, _resolve(request.app[SCHEDULER].config, payload.get("model"))


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
                tools_offered: bool) -> Callable[[Answer], Rewrite]:
    """A `relay` transform: the backend's errors as `{"error": message}`, its SSE stream as NDJSON
    (`kind`), a whole answer through `whole`."""

    def transform(upstream: Answer) -> Rewrite:
        if upstream.status == 200 and is_event_stream(upstream) and kind is not None:
            ndjson = tr.NDJSONStream(kind, model)
            if not repair_calls:
                return Rewrite(ndjson.feed, ndjson.close, tr.NDJSON)
            fixer = repair.StreamRepair(tools_offered)  # lifts calls written as text, as on /v1
            return Rewrite(lambda chunk: ndjson.feed(fixer.feed(chunk)),
                           lambda: ndjson.feed(fixer.close()) + ndjson.close(), tr.NDJSON)
        held = bytearray()

        def close() -> bytes:
            if upstream.status != 200:
                return json.dumps({"error": tr.error_message(bytes(held))}).encode()
            try:
                body = json.loads(held)
            except (ValueError, RecursionError):
                return json.dumps({"error": "the backend's answer is not JSON"}).encode()
            if repair_calls and isinstance(body, dict):
                repair.repair_completion(body, tools_offered)
            return json.dumps(whole(body), ensure_ascii=False).encode()

        return Rewrite(lambda chunk: held.extend(chunk) or b"", close, "application/json")

    return transform


async def _relay_translated(request: web.Request, model: Model, path: str, body: dict,
                            whole: Callable[[Any], dict], kind: str | None, keep_alive: float | None
                            ) -> web.StreamResponse:
    scheduler = request.app[SCHEDULER]
    transform = _translated(model.name, whole, kind if body.get("stream") else None, model.repair_tool_calls,
                            bool(body.get("tools")))
    data = json.dumps(body, ensure_ascii=False).encode()
    send = {**{k: v for k, v in upstream_headers(request).items() if k.lower() != "content-type"},
            "Content-Type": "application/json"}
    response = await switch_and_relay(request, model, data, transform, path=path, send_headers=send)
    if keep_alive == 0:
        if not response.prepared:  # a whole answer: send it before the model is stopped
            await response.prepare(request)
            await response.write_eof()
        await _unload(scheduler, model)
    return response


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

async def chat(request: web.Request) -> web.StreamResponse:
    payload, model = await _read(request)
    keep_alive = tr.keep_alive_seconds(payload.get("keep_alive"))
    if not payload.get("messages"):
        return await _load_or_unload(request, model, keep_alive, "chat")
    body = tr.chat_request(payload, model.name)
    return await _relay_translated(request, model, "/v1/chat/completions", body,
                                   lambda a: tr.chat_response(a, model.name, time.time()), "chat", keep_alive)


async def generate(request: web.Request) -> web.StreamResponse:
    payload, model = await _read(request)
    keep_alive = tr.keep_alive_seconds(payload.get("keep_alive"))
    if not payload.get("prompt") and not payload.get("images"):
        return await _load_or_unload(request, model, keep_alive, "generate")
    path, body = tr.generate_request(payload, model.name)
    return await _relay_translated(request, model, path, body,
                                   lambda a: tr.generate_response(a, model.name, time.time()), "generate",
                                   keep_alive)


async def embed(request: web.Request) -> web.StreamResponse:
    payload, model = await _read(request)
    old = request.path == "/api/embeddings"
    whole = tr.embeddings_response if old else (lambda a: tr.embed_response(a, model.name))
    return await _relay_translated(request, model, "/v1/embeddings", tr.embed_request(payload, model.name),
                                   whole, None, tr.keep_alive_seconds(payload.get("keep_alive")))


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
    model = _resolve(config, payload.get("model") or payload.get("name"))
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
