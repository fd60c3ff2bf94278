"""Anthropic's Messages API in terms of what llama-server answers: the history repair and the
error shape. Pure."""

from __future__ import annotations

import json
from typing import Any

from ..repair import repair_arguments

# Anthropic's error types by status (docs.anthropic.com, "Errors"); anything else is api_error
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict:
    """`{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def repair_tool_uses(body: Any) -> list[str]:
    """Repair, in place, the `tool_use` blocks of assistant messages whose `input` is a string
    (broken or not) instead of an object; return the names of the tools repaired."""
    repaired: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for msg in messages if isinstance(messages, list) else ():
        if not isinstance(msg, dict) or msg.get("role") != "assistant" or not isinstance(msg.get("content"), list):
            continue
        for block in msg["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_use" and "input" in block \
                    and not isinstance(block["input"], dict):
                name = block.get("name") if isinstance(block.get("name"), str) else "?"
                fixed, _ = repair_arguments(block["input"], name)
                block["input"] = json.loads(fixed)
                repaired.append(name)
    return repaired


def anthropic_error(status: int, body: bytes) -> bytes:
    """A backend's error body in Anthropic's shape (llama-server answers OpenAI's); one already
    in that shape, or one that is no JSON object, is kept as it is."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body
    if not isinstance(data, dict) or data.get("type") == "error":
        return body
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
    if not isinstance(message, str):
        return body
    return json.dumps(error_body(status, message), ensure_ascii=False).encode()
