"""The wire dialects of the model routes: OpenAI's, Anthropic's and Ollama's. A dialect owns what
its clients read and nothing else: the error body, an error inside a stream whose status line is
gone, and a keep-alive line while a stream waits. docs/design.md, "One request pipeline"."""

from __future__ import annotations

import json

from ..errors import SwitchError
from ..translate import anthropic

ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
OLLAMA_PREFIX = "/api/"


class Dialect:
    """OpenAI's: `{"error": {"message", "type", "code"}}`, SSE `data:` events, comment lines."""

    name = "openai"

    def error_body(self, status: int, message: str, type_: str, code: str) -> dict:
        return {"error": {"message": message, "type": type_, "code": code}}

    def event(self, body: dict) -> bytes:
        """One JSON object framed for the stream."""
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def in_band(self, e: SwitchError) -> bytes:
        """The switch's error inside a stream already begun."""
        return self.event(self.error_body(e.status, e.message, e.type, e.code))

    def backend_error(self, body: object) -> bytes | None:
        """A backend's own error body, framed for the stream, where the client reads it as it is."""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return self.event(body)
        return None

    def keep_alive(self, text: str) -> bytes | None:
        """A line every client ignores, while the stream waits (None: the dialect has none)."""
        return b": " + text.replace("\n", " ").encode() + b"\n\n"


class Anthropic(Dialect):
    """`{"type": "error", "error": {"type", "message"}}`, as `event: error` in a stream."""

    name = "anthropic"

    def error_body(self, status: int, message: str, type_: str, code: str) -> dict:
        return anthropic.error_body(status, message)

    def event(self, body: dict) -> bytes:
        return b"event: error\n" + super().event(body)

    def backend_error(self, body: object) -> bytes | None:
        return None  # llama-server's are OpenAI-shaped: the message goes into Anthropic's


class Ollama(Dialect):
    """`{"error": "message"}`, as the last NDJSON line of a stream; no keep-alive line."""

    name = "ollama"

    def error_body(self, status: int, message: str, type_: str, code: str) -> dict:
        return {"error": message}

    def event(self, body: dict) -> bytes:
        return json.dumps(body, ensure_ascii=False).encode() + b"\n"

    def backend_error(self, body: object) -> bytes | None:
        return None

    def keep_alive(self, text: str) -> bytes | None:
        return None


OPENAI, ANTHROPIC, OLLAMA = Dialect(), Anthropic(), Ollama()


def dialect_for(path: str) -> Dialect:
    """The dialect a client of `path` reads (for errors raised before a route chose one)."""
    if path in ANTHROPIC_PATHS:
        return ANTHROPIC
    if path.startswith(OLLAMA_PREFIX):
        return OLLAMA
    return OPENAI
