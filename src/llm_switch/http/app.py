"""aiohttp wiring: routes, the error middleware, and the resources the app owns."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..backends.llama_server import Backends
from ..config import Config
from ..events import EventBus
from ..observe.middleware import observe_requests
from ..observe.notify import keep_status
from ..observe.prometheus import Metrics
from ..observe.status import status_line
from ..scheduling.scheduler import Scheduler
from ..units.systemd import Systemd
from . import admin, anthropic, json_body, logs, native, ollama, openai, openapi, reload, ui
from .auth import require_key
from .errors import openai_errors
from .guard import cors_headers, guard
from .inflight import InFlight
from .keys import CONFIG, INFLIGHT, METRICS, SCHEDULER


def build_app(config: Config, events: EventBus | None = None) -> web.Application:
    events = events or EventBus()
    # observed outermost (it sees every answer's status), then errors: a refused key gets the same
    # error shape as everything else; the browser's door (guard) before the key, as preflights carry none
    app = web.Application(middlewares=[observe_requests(lambda: events), openai_errors, guard, require_key],
                          client_max_size=config.max_body_bytes)
    app.on_response_prepare.append(cors_headers)
    app[CONFIG] = config
    app[INFLIGHT] = InFlight()
    app[METRICS] = Metrics(events, lambda: s.snapshot() if (s := app.get(SCHEDULER)) is not None else None)
    app[logs.LIVE] = set()
    json_body.attach(app)
    ui.attach(app, events)
    app.on_shutdown.append(logs.end_live_streams)
    app.cleanup_ctx.append(_resources(events))
    app.add_routes(admin.ROUTES + logs.ROUTES + ui.ROUTES + anthropic.ROUTES + ollama.ROUTES + native.ROUTES
                   + openai.ROUTES)
    app.add_routes(reload.ROUTES + openapi.ROUTES)
    return app


def _resources(events: EventBus):
    async def resources(app: web.Application) -> AsyncIterator[None]:
        backends = Backends()
        systemd = Systemd()
        scheduler = Scheduler(app[CONFIG], systemd, backends, events)
        unsubscribe = keep_status(events, lambda: status_line(scheduler.snapshot()))
        try:
            await systemd.connect()
            await scheduler.adopt()
        except BaseException:
            unsubscribe()
            await backends.close()
            await systemd.close()
            raise
        app[SCHEDULER] = scheduler
        yield
        unsubscribe()
        await scheduler.close()
        await backends.close()
        await systemd.close()

    return resources
