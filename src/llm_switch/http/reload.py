"""`POST /reload`: read the config file anew, as SIGHUP does, and answer whether it applied (a
refused config is a 409 with the reason); `GET /reload`: the last reload's outcome, whichever
way it was asked for. The reload itself is the server's (cli/serve.py), set under RELOADER."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from ..errors import SwitchError


@dataclass(frozen=True)
class Outcome:
    applied: bool
    at: float              # unix time
    config: str | None     # the file read
    message: str           # what changed, or why the file was refused
    notes: tuple[str, ...] = field(default=())  # settings that take effect only on a restart

    def as_json(self) -> dict:
        return {"applied": self.applied, "at": self.at, "config": self.config,
                "message" if self.applied else "reason": self.message, "notes": list(self.notes)}


@dataclass
class Reloader:
    reload: Callable[[], Awaitable[Outcome]]
    last: Outcome | None = None


RELOADER = web.AppKey("reloader", Reloader)


class ReloadRefused(SwitchError):
    status, type, code = 409, "invalid_request_error", "config_refused"


class ReloadUnavailable(SwitchError):
    status, type, code = 503, "server_error", "reload_unavailable"


def _reloader(request: web.Request) -> Reloader:
    reloader = request.app.get(RELOADER)
    if reloader is None:
        raise ReloadUnavailable("this switch was not started by `llm-switch serve`; it cannot reload its config")
    return reloader


async def reload(request: web.Request) -> web.Response:
    outcome = await _reloader(request).reload()
    if not outcome.applied:
        raise ReloadRefused(f"reload refused, the running config stays in force: {outcome.message}")
    return web.json_response(outcome.as_json())


async def last(request: web.Request) -> web.Response:
    outcome = _reloader(request).last
    return web.json_response({"last": outcome.as_json() if outcome else None})


ROUTES = [
    web.post("/reload", reload),
    web.get("/reload", last),
]
