"""Every error the switch itself answers, as JSON in the dialect of the route asked (the shapes are
in http/dialects.py). Never a traceback."""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import RequestTooLarge, SwitchError
from .dialects import dialect_for
from .keys import CONFIG

log = logging.getLogger(__name__)

ROUTES_HINT = ("the switch serves /v1/* for models, /v1/models, /api/* (Ollama), /upstream/{model}/…, "
               "/health, /running, /status, /load, /unload, /logs/{model}, /metrics, /ui")


def error_body(path: str, status: int, message: str, type_: str, code: str) -> dict:
    """The error body a client of `path` reads: its dialect's shape (http/dialects.py)."""
    return dialect_for(path).error_body(status, message, type_, code)


def error_response(status: int, message: str, type_: str, code: str,
                   headers: dict[str, str] | None = None, path: str = "") -> web.Response:
    return web.json_response(error_body(path, status, message, type_, code), status=status, headers=headers)


def switch_error_response(e: SwitchError, path: str = "") -> web.Response:
    return error_response(e.status, e.message, e.type, e.code, e.headers() or None, path)


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    """Whatever goes wrong, the client gets an OpenAI-shaped JSON error, never a traceback."""
    try:
        return await handler(request)
    except SwitchError as e:
        return switch_error_response(e, request.path)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_body_bytes
        return switch_error_response(RequestTooLarge(f"request body is larger than the limit of {limit} bytes "
                                                     "(max_body_bytes in config.yaml)"), request.path)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = f"{request.method} {request.path}: {e.reason}"
        if e.status == 404:
            message += f" ({ROUTES_HINT})"
        return error_response(e.status, message, "invalid_request_error", e.reason.lower().replace(" ", "_"),
                              path=request.path)
    except Exception:
        log.exception("%s %s: internal error", request.method, request.path)
        return error_response(500, "internal error in llm-switch; see its log (journalctl --user -u llm-switch)",
                              "server_error", "internal_error", path=request.path)
