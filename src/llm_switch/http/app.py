"""aiohttp wiring: routes, the middlewares, and the app's own resources under typed keys."""

from __future__ import annotations

from aiohttp import web

from ..events import EventBus
from ..observe.middleware import observe_requests
from ..observe.prometheus import Metrics
from ..scheduling.scheduler import Scheduler
from . import admin, anthropic, json_body, logs, native, ollama, openai, openapi, reload, ui
from .auth import require_key
from .errors import openai_errors
from .guard import cors_headers, guard
from .inflight import InFlight
from .keys import CONFIG, INFLIGHT, METRICS, SCHEDULER


def build_app(events: EventBus, scheduler: Scheduler) -> web.Application:
    """The routes over the parts cli/serve.py built and started. The config is the scheduler's:
    `app[CONFIG]` keeps the one the app was built with (listen, body limit: kept across reloads),
    `scheduler.config` is the newest."""
    config = scheduler.config
    # observed outermost (it sees every answer's status), then errors: a refused key gets the same
    # error shape as everything else; the browser's door (guard) before the key, as preflights carry none
    app = web.Application(middlewares=[observe_requests(lambda: events), openai_errors, guard, require_key],
                          client_max_size=config.max_body_bytes)
    app.on_response_prepare.append(cors_headers)
    app[CONFIG] = config
    app[SCHEDULER] = scheduler
    app[INFLIGHT] = InFlight()
    app[METRICS] = Metrics(events, scheduler.snapshot)
    app[logs.LIVE] = set()
    json_body.attach(app)
    ui.attach(app, events)
    app.on_shutdown.append(logs.end_live_streams)
    app.add_routes(admin.ROUTES + logs.ROUTES + ui.ROUTES + anthropic.ROUTES + ollama.ROUTES + native.ROUTES
                   + openai.ROUTES)
    app.add_routes(reload.ROUTES + openapi.ROUTES)
    return app
