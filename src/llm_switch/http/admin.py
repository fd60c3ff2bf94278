"""The switch's own routes: liveness, what runs, explicit load and unload."""

from __future__ import annotations

from aiohttp import web

from ..errors import UnknownModel
from ..observe import prometheus, status
from ..scheduling.scheduler import Scheduler
from .keys import METRICS, SCHEDULER


def _model_name(scheduler: Scheduler, request: web.Request) -> str:
    model = scheduler.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel.named(request.match_info["model"], scheduler.config.known())
    return model.name


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def running(request: web.Request) -> web.Response:
    return web.json_response({"running": status.running(request.app[SCHEDULER].snapshot())})


async def status_report(request: web.Request) -> web.Response:
    return web.json_response(status.snapshot(request.app[SCHEDULER].snapshot()))


async def load(request: web.Request) -> web.Response:
    """Start a model through the same queue and rules as a request for it."""
    scheduler = request.app[SCHEDULER]
    runtime = await scheduler.load(_model_name(scheduler, request))
    return web.json_response({"loaded": runtime.name,
                              "model": scheduler.snapshot().models[runtime.name].as_json(with_cache=False)})


async def unload(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    names = [_model_name(scheduler, request)] if "model" in request.match_info else None
    return web.json_response({"unloaded": await scheduler.unload(names)})


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus' text format (`metrics_public: true` opens it to scrapers without a key)."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": prometheus.CONTENT_TYPE})


ROUTES = [
    web.get("/health", health),
    web.get("/metrics", metrics_text),
    web.get("/running", running),
    web.get("/status", status_report),
    web.post("/load/{model}", load),
    web.post("/unload", unload),
    web.post("/unload/{model}", unload),
]
