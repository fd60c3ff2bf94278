"""The door a web browser must pass before anything is carried out: the Host check, the refusal
of cross-site requests, CORS for listed origins. The rules: docs/design.md, "Browsers"."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Config
from ..config.keys import is_loopback
from ..config.web import host_name
from ..errors import Forbidden
from ..observe.logging import Throttle
from .auth import current_config

log = logging.getLogger(__name__)

_CROSS = frozenset({"cross-site", "same-site"})  # same-site: another port of localhost is another app
_LOG_EVERY = 10.0  # s: at most one line about refused requests this often
PREFLIGHT_MAX_AGE = "600"


class _HostVerdicts:
    """host_allowed's answers for the config in force: a client sends the same Host every time, and
    parsing it (an IP address or a name) costs more than the rest of the guard."""

    LIMIT = 64  # Hosts remembered; past it (a scan of made-up names) they are forgotten all at once

    def __init__(self) -> None:
        self.config: Config | None = None
        self.known: dict[str | None, bool] = {}

    def allowed(self, host: str | None, config: Config) -> bool:
        if config is not self.config or len(self.known) >= self.LIMIT:
            self.config, self.known = config, {}
        if (verdict := self.known.get(host)) is None:
            verdict = self.known[host] = host_allowed(host, config)
        return verdict


_verdicts = _HostVerdicts()


def host_allowed(host: str | None, config: Config) -> bool:
    """Whether a request with this `Host` header may go on."""
    if host is None or (config.api_keys and not is_loopback(config.listen_host)):
        return True
    name = host_name(host)
    return name is not None and (is_loopback(name) or name in config.allowed_hosts  # 127.0.0.0/8 too
                                 or name == config.listen_host.lower())


def cross_origin(method: str, path: str, headers: Mapping[str, str], config: Config) -> str | None:
    """Why a request sent by a page of another origin is refused; None when it may go on."""
    if method in ("GET", "HEAD") and path == "/health":
        return None
    origin = headers.get("Origin")
    if origin is not None:
        if origin.lower() in config.cors_origins or _same_origin(origin, headers.get("Host")):
            return None
        return f"a web page at {origin} may not call llm-switch"
    site = headers.get("Sec-Fetch-Site", "").lower()
    if site not in _CROSS:
        return None
    if method == "GET" and path == "/ui" and headers.get("Sec-Fetch-Dest") == "document":
        return None  # a link to the page: it holds no data, and its own requests are same-origin
    return f"a request from another site ({site}) may not call llm-switch"


def _same_origin(origin: str, host: str | None) -> bool:
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return host is not None and netloc != "" and netloc.lower() == host.strip().lower()


def is_preflight(request: web.Request) -> bool:
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    config = current_config(request)
    host = request.headers.get("Host")
    if not _verdicts.allowed(host, config):
        _log_refused(request, f"Host {host!r}")
        raise Forbidden(f"Host {host!r} is not one llm-switch answers to (a web page may use such a name to "
                        "reach it through DNS rebinding); use http://127.0.0.1:PORT or localhost, or add the "
                        "name to allowed_hosts in config.yaml", "host_not_allowed")
    if why := cross_origin(request.method, request.path, request.headers, config):
        _log_refused(request, why)
        raise Forbidden(f"{why}: browsers' cross-site requests are refused so that no web page can drive "
                        "the switch; add the page's origin to cors_origins in config.yaml if it is "
                        "a client you trust", "cross_origin")
    if is_preflight(request):
        return web.Response(status=204)  # its Access-Control-* headers: cors_headers
    return await handler(request)


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no backend's Access-Control-* headers; the switch's own for a listed origin."""
    for name in [k for k in response.headers if k.lower().startswith("access-control-")]:
        response.headers.popall(name)
    origin = request.headers.get("Origin")
    if origin is None or origin.lower() not in current_config(request).cors_origins:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "*"
    response.headers.add("Vary", "Origin")
    if is_preflight(request):
        response.headers["Access-Control-Allow-Methods"] = request.headers["Access-Control-Request-Method"]
        if asked := request.headers.get("Access-Control-Request-Headers"):
            response.headers["Access-Control-Allow-Headers"] = asked
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"  # a listed public page → loopback
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE


_refused = Throttle(_LOG_EVERY)  # a page that keeps trying must not flood the journal


def _log_refused(request: web.Request, why: str) -> None:
    if (more := _refused.next_line()) is not None:
        log.info("refused %s %s from %s: %s%s", request.method, request.path, request.remote, why, more)
