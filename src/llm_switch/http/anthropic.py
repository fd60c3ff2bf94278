"""Anthropic's Messages API (`ANTHROPIC_BASE_URL` clients such as Claude Code): llama-server
speaks `/v1/messages` itself, so the switch finds the model in the body, switches, and relays the
answer as it comes (streams event by event). Errors, the switch's own and the backend's, reach the
client in Anthropic's shape (http/dialects.py; the pure translation is translate/anthropic.py)."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..config import Model
from ..translate.anthropic import anthropic_error, repair_tool_uses
from .dialects import ANTHROPIC
from .pipeline import Body, Call, ModelRoute
from .rewrite import Head, Rewrite, hold_whole

log = logging.getLogger(__name__)


def _errors_in_anthropic_shape(head: Head) -> Rewrite | None:
    if head.status < 400 or head.content_type != "application/json":
        return None  # an answer passes byte for byte
    return hold_whole(lambda held: anthropic_error(head.status, held))


async def _repair(request: web.Request, model: Model, payload: dict, body: Body) -> Call:
    if model.repair_tool_calls and (names := repair_tool_uses(payload)):
        log.info("%s: repaired the input of %d tool_use block(s) in the request history: %s",
                 model.name, len(names), ", ".join(names))
        body = json.dumps(payload, ensure_ascii=False).encode()
    return Call(body, _errors_in_anthropic_shape)


# POST /v1/messages and /v1/messages/count_tokens; a stream waiting gets comment lines
messages = ModelRoute(ANTHROPIC, _repair).serve

ROUTES = [
    web.post("/v1/messages", messages),
    web.post("/v1/messages/count_tokens", messages),
]
