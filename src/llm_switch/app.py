"""aiohttp wiring: routes, the one error shape, shared resources under AppKeys."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import journal, repair
from .config import Config
from .errors import BadRequest, RequestTooLarge, SwitchError, UnknownModel
from .proxy import BackendGone, Backends, relay, repair_tool_calls
from .switcher import State, Switcher
from .systemd import Systemd

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
SWITCHER = web.AppKey("switcher", Switcher)
BACKENDS = web.AppKey("backends", Backends)
SYSTEMD = web.AppKey("systemd", Systemd)


def error_response(status: int, message: str, type_: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": code}}, status=status)


def switch_error_response(e: SwitchError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    """Whatever goes wrong, the client gets an OpenAI-shaped JSON error, never a traceback."""
    try:
        return await handler(request)
    except SwitchError as e:
        return switch_error_response(e)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_body_bytes
        return switch_error_response(RequestTooLarge(f"request body is larger than the limit of {limit} bytes "
                                                     "(max_body_bytes in config.yaml)"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = f"{request.method} {request.path}: {e.reason}"
        if e.status == 404:
            message += " (the switch serves /v1/* for models, /v1/models, /health, /running, /status, /unload)"
        return error_response(e.status, message, "invalid_request_error", e.reason.lower().replace(" ", "_"))
    except Exception:
        log.exception("%s %s: internal error", request.method, request.path)
        return error_response(500, "internal error in llm-switch; see its log (journalctl --user -u llm-switch)",
                              "server_error", "internal_error")


# -- the model routes ---------------------------------------------------------------------------

async def forward(request: web.Request) -> web.StreamResponse:
    switcher = request.app[SWITCHER]
    config = switcher.config  # the newest: a reload replaces it
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=config.max_body_bytes, actual_size=request.content_length)
    body = await request.read()
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", "invalid_json") from None
    name = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(name, str):
        raise BadRequest("request body must be a JSON object with a string `model` naming one of: "
                         + ", ".join(config.models), "missing_model")
    model = config.resolve(name)
    if model is None:
        raise UnknownModel(f"unknown model {name!r}; this switch serves: {_known(config)}")

    transform = None
    if model.repair_tool_calls and request.path.endswith("/chat/completions"):
        if names := repair.repair_request(payload):
            log.info("%s: repaired the arguments of %d tool call(s) in the request history: %s",
                     model.name, len(names), ", ".join(names))
            body = json.dumps(payload, ensure_ascii=False).encode()
        transform = repair_tool_calls(model, tools_offered=bool(payload.get("tools")))

    backends = request.app[BACKENDS]
    try:
        async with switcher.use(model):
            return await relay(request, backends.session(model.url), model, body, transform)
    except BackendGone:
        # the unit may have been stopped behind our back: find out, and start it again once
        if not await switcher.forget_if_stopped(model):
            raise
        log.info("%s: %s was stopped outside the switch; starting it again", model.name, model.unit)
        async with switcher.use(model):
            return await relay(request, backends.session(model.url), model, body, transform)


def _known(config: Config) -> str:
    return ", ".join(
        name + (f" (aliases: {', '.join(m.aliases)})" if m.aliases else "") for name, m in config.models.items()
    )


def _model_entry(switcher: Switcher, name: str) -> dict:
    m = switcher.config.models[name]
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-switch",
            "aliases": list(m.aliases), "unit": m.unit, "state": str(switcher.state_of(name).state)}


async def list_models(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    return web.json_response({"object": "list", "data": [_model_entry(switcher, n) for n in switcher.config.models]})


async def get_model(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    model = switcher.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel(f"unknown model {request.match_info['model']!r}; this switch serves: {_known(switcher.config)}")
    return web.json_response(_model_entry(switcher, model.name))


# -- the switch's own routes --------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def running(request: web.Request) -> web.Response:
    return web.json_response({"running": request.app[SWITCHER].running()})


async def status(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    config = switcher.config
    models = [{"model": n, "unit": m.unit, "state": str(s.state), "since": s.since, "reason": s.reason,
               "in_flight": s.in_flight}
              for n, m in config.models.items() for s in [switcher.state_of(n)]]
    return web.json_response({"config": config.path, "listen": config.listen, "models": models,
                              "switches": [r.as_json() for r in switcher.switches]})


async def unload(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    names = None
    if "model" in request.match_info:
        model = switcher.config.resolve(request.match_info["model"])
        if model is None:
            raise UnknownModel(f"unknown model {request.match_info['model']!r}; this switch serves: "
                               f"{_known(switcher.config)}")
        names = [model.name]
    return web.json_response({"unloaded": await switcher.unload(names)})


# -- the application ----------------------------------------------------------------------------

def status_line(switcher: Switcher) -> str:
    """For `systemctl --user status llm-switch`: what is loaded, and how the last switch went."""
    up = [f"{n} {s.state}" for n, s in switcher.models.items()
          if s.state in (State.READY, State.STARTING, State.STOPPING)]
    failed = [n for n, s in switcher.models.items() if s.state is State.FAILED]
    text = ", ".join(up) if up else "no model loaded"
    if failed:
        text += f"; failed: {', '.join(failed)}"
    if switcher.switches:
        last = switcher.switches[-1]
        text += (f"; last switch {last.previous or '–'} → {last.target} "
                 f"{'in' if last.ok else 'FAILED after'} {last.stopped_s + last.ready_s:.1f} s")
    return text


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    app.add_routes([
        web.get("/health", health),
        web.get("/running", running),
        web.get("/status", status),
        web.post("/unload", unload),
        web.post("/unload/{model}", unload),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
        web.post("/v1/{tail:.*}", forward),
    ])
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    backends = Backends()
    systemd = Systemd()
    try:
        await systemd.connect()
        switcher = Switcher(app[CONFIG], systemd, backends)
        switcher.on_change = lambda: journal.notify(f"STATUS={status_line(switcher)}")
        await switcher.adopt()
    except BaseException:
        await backends.close_all()
        await systemd.close()
        raise
    app[BACKENDS], app[SYSTEMD], app[SWITCHER] = backends, systemd, switcher
    yield
    await switcher.close()
    await backends.close_all()
    await systemd.close()
