"""aiohttp wiring: routes, the error middleware, and the resources the app owns."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..backends.llama_server import Backends
from ..config import Config
from ..events import EventBus
from ..observe.notify import keep_status
from ..observe.status import status_line
from ..scheduling.scheduler import Scheduler
from ..units.systemd import Systemd
from . import admin, anthropic, native, ollama, openai
from .auth import require_key
from .errors import openai_errors
from .inflight import InFlight
from .keys import CONFIG, INFLIGHT, SCHEDULER


def build_app(config: Config, events: EventBus | None = None) -> web.Application:
    # errors outermost: a refused key gets the same error shape as everything else
    app = web.Application(middlewares=[openai_errors, require_key], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[INFLIGHT] = InFlight()
    app.cleanup_ctx.append(_resources(events or EventBus()))
    app.add_routes(admin.ROUTES + anthropic.ROUTES + ollama.ROUTES + native.ROUTES + openai.ROUTES)
    return app


def _resources(events: EventBus):
    async def resources(app: web.Application) -> AsyncIterator[None]:
        backends = Backends()
        systemd = Systemd()
        scheduler = Scheduler(app[CONFIG], systemd, backends, events)
        unsubscribe = keep_status(events, lambda: status_line(scheduler))
        try:
            await systemd.connect()
            await scheduler.adopt()
        except BaseException:
            unsubscribe()
            await backends.close_all()
            await systemd.close()
            raise
        app[SCHEDULER] = scheduler
        yield
        unsubscribe()
        await scheduler.close()
        await backends.close_all()
        await systemd.close()

    return resources
