"""API keys on the wire: one middleware checks every request, except those to an open route.

- A key comes as `Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY` (Anthropic
  clients). It is compared in constant time with every configured key; missing or wrong: 401
  `invalid_api_key` with `WWW-Authenticate: Bearer`.
- Every route needs a key, including routes added later, except `OPEN` (and `/metrics` with
  `metrics_public: true`). Without `api_keys` in the config every route is open (the config
  allows that on loopback only, or with `allow_unauthenticated`).
- A key with `models:` may use those models on the model routes (`/v1/*`) and nothing else: a
  request for another model, or for an admin route, gets 403; a 404 for an unknown model names
  only the key's models.
- A key is never logged: the log names it by its `name`. The relay strips both headers, so a
  client's key never reaches a backend (see `relay.upstream_headers`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from aiohttp import web

from ..config import Config, Model
from ..config.types import ApiKey
from ..errors import Forbidden, Unauthorized, UnknownModel
from ..observe.logging import Throttle
from .keys import CONFIG, SCHEDULER

log = logging.getLogger(__name__)

# GET/HEAD only; /ui is the page's shell (its script and style too), its data needs a key
OPEN = frozenset({"/health", "/ui", "/ui/ui.js", "/ui/ui.css"})
MODEL_ROUTES = ("/v1/",)  # where a key limited to some models may go; each checks the model itself
API_KEY = web.RequestKey("api_key", ApiKey)  # the key a request came with (absent: no keys configured)
_REFUSED_LOG_EVERY = 10.0  # s: at most one line about refused requests this often


@web.middleware
async def require_key(request: web.Request, handler) -> web.StreamResponse:
    config = current_config(request)
    if not config.api_keys or _is_open(request, config):
        return await handler(request)
    key = match(config.api_keys, presented(request))
    if key is None:
        missing = presented(request) is None
        _log_refused(request, "no key" if missing else "a wrong key")
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`" if missing
                           else "invalid API key (see api_keys in llm-switch's config.yaml)")
    if key.models is not None and not request.path.startswith(MODEL_ROUTES):
        log.info("key %s: refused %s %s: a key limited to some models may use the /v1 routes only",
                 key.name, request.method, request.path)
        raise Forbidden(f"this API key ({key.name}) may use only the models {', '.join(sorted(key.models))} "
                        f"on /v1/*; {request.path} needs a key without `models`")
    request[API_KEY] = key
    log.debug("key %s: %s %s", key.name, request.method, request.path)
    if key.models is None:
        return await handler(request)
    try:
        return await handler(request)
    except UnknownModel as e:  # a key limited to some models hears of those only
        raise UnknownModel.named(e.name, config.known(key.models)) from None


def allow_model(request: web.Request, model: Model) -> None:
    """403 when the request's key may not use `model`: call before switching to it."""
    key = request.get(API_KEY)
    if key is None or key.models is None or model.name in key.models:
        return
    log.info("key %s: refused model %s (it may use %s)", key.name, model.name, ", ".join(sorted(key.models)))
    raise Forbidden(f"this API key ({key.name}) may not use model {model.name!r}; it may use: "
                    f"{', '.join(sorted(key.models))}", "model_not_allowed")


def visible(request: web.Request, names) -> list[str]:
    """The model names of `names` the request's key may use (for model lists)."""
    key = request.get(API_KEY)
    return [n for n in names if key is None or key.models is None or n in key.models]


def presented(request: web.Request) -> str | None:
    """The key the client sent, if any: `Authorization: Bearer KEY`, else `x-api-key: KEY`."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip() or None


def match(keys: tuple[ApiKey, ...], given: str | None) -> ApiKey | None:
    """The configured key equal to `given`. Compared with every key, in constant time each
    (digests of equal length: the time tells nothing of a key's length either)."""
    if given is None:
        return None
    digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, hashlib.sha256(key.secret.encode()).digest()) and found is None:
            found = key
    return found


def current_config(request: web.Request) -> Config:
    """The newest config (a reload replaces keys too), or the one the app was built with."""
    scheduler = request.config_dict.get(SCHEDULER)
    return scheduler.config if scheduler is not None else request.config_dict[CONFIG]


def _is_open(request: web.Request, config: Config) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    return request.path in OPEN or (config.metrics_public and request.path == "/metrics")


_refused = Throttle(_REFUSED_LOG_EVERY)  # a scan must not flood the journal


def _log_refused(request: web.Request, what: str) -> None:
    if (more := _refused.next_line()) is not None:
        log.info("refused %s %s from %s: %s%s", request.method, request.path, request.remote, what, more)
