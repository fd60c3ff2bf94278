"""The error shapes on the wire, one place each: every error the switch itself answers is
OpenAI's `{"error": {"message", "type", "code"}}`, except on the Anthropic routes
(`{"type": "error", "error": {"type", "message"}}`) and the Ollama routes (`{"error": "message"}`),
whose clients read only their own shape. Never a traceback."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..errors import RequestTooLarge, SwitchError
from .keys import CONFIG

log = logging.getLogger(__name__)

ROUTES_HINT = ("the switch serves /v1/* for models, /v1/models, /api/* (Ollama), /upstream/{model}/…, "
               "/health, /running, /status, /load, /unload, /logs/{model}, /metrics, /ui")


ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
OLLAMA_PREFIX = "/api/"

# Anthropic's error types by status (docs.anthropic.com, "Errors"); anything else is api_error
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(path: str, status: int, message: str, type_: str, code: str) -> dict:
    """The error body a client of `path` reads: Anthropic's, Ollama's or OpenAI's shape."""
    if path in ANTHROPIC_PATHS:
        return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
    if path.startswith(OLLAMA_PREFIX):
        return {"error": message}
    return {"error": {"message": message, "type": type_, "code": code}}


def in_band_error(path: str, e: SwitchError) -> bytes:
    """An error sent after the status line, inside a stream: an SSE event (OpenAI's `data:`,
    Anthropic's `event: error`), or an NDJSON line on the Ollama routes."""
    body = json.dumps(error_body(path, e.status, e.message, e.type, e.code)).encode()
    if path.startswith(OLLAMA_PREFIX):
        return body + b"\n"
    if path in ANTHROPIC_PATHS:
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


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
