"""The Ollama API in terms of the OpenAI API that llama-server speaks: pure translators of
requests, answers and streams (no I/O, no clock unless given), table-tested.

Ollama's answers stream as NDJSON (one JSON object a line, `"done": true` on the last one);
OpenAI's as SSE. Ollama tool calls carry `arguments` as an object and have no ids; OpenAI's carry
a JSON string and an id that tool results refer to.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..repair import repair_arguments
from ..repair.sse import SSEParser

NDJSON = "application/x-ndjson"
FOREVER = "2318-01-01T00:00:00Z"  # expires_at of a model that is never unloaded for idleness

# Ollama's `options` that llama-server's OpenAI routes take, by their name there
_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
    "seed": "seed", "stop": "stop", "num_predict": "max_tokens", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
    "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
}
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's `keep_alive` in seconds: a number (seconds) or a Go duration ("5m", "1h30m",
    "-1"); negative means forever; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def timestamp(t: float) -> str:
    """RFC 3339 in UTC, as Ollama's `created_at` and `expires_at`."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _options(body: dict, out: dict) -> None:
    options = body.get("options")
    if not isinstance(options, dict):
        return
    for key, value in options.items():
        name = _OPTIONS.get(key)
        if name is None:
            continue  # num_ctx, num_gpu, …: the unit's own settings decide
        if key == "num_predict" and isinstance(value, (int, float)) and value < 0:
            continue  # -1 (until done) and -2 (fill the context): no limit
        out[name] = value


def _format(body: dict, out: dict) -> None:
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}


def _image_url(data: str) -> dict:
    mime = ("image/png" if data.startswith("iVBOR") else "image/gif" if data.startswith("R0lGOD")
            else "image/webp" if data.startswith("UklGR") else "image/jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _content(text: Any, images: Any) -> Any:
    if not isinstance(images, list) or not images:
        return text if isinstance(text, str) else ""
    parts: list[dict] = [{"type": "text", "text": text}] if isinstance(text, str) and text else []
    return parts + [_image_url(i) for i in images if isinstance(i, str)]


def _common(body: dict, out: dict) -> dict:
    stream = body.get("stream", True) is not False  # Ollama streams unless told not to
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    _options(body, out)
    _format(body, out)
    if isinstance(body.get("think"), bool):
        out["chat_template_kwargs"] = {"enable_thinking": body["think"]}
    return out


def chat_messages(messages: Any) -> list[dict]:
    """Ollama chat history as OpenAI messages: images as data URLs, tool calls with ids (made up,
    since Ollama has none), each tool result linked to the earliest unanswered call of its tool."""
    out: list[dict] = []
    unanswered: list[tuple[str, str]] = []  # (call id, tool name)
    for i, msg in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        entry: dict[str, Any] = {"role": role, "content": _content(msg.get("content"), msg.get("images"))}
        if role == "assistant" and isinstance(msg.get("tool_calls"), list):
            calls = []
            for j, call in enumerate(msg["tool_calls"]):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    continue
                name = fn.get("name") if isinstance(fn.get("name"), str) else "?"
                args = fn.get("arguments")
                arguments = repair_arguments(args if args is not None else {}, name)[0] \
                    if not isinstance(args, dict) else json.dumps(args, ensure_ascii=False)
                call_id = f"call_{i}_{j}"
                calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
                unanswered.append((call_id, name))
            if calls:
                entry["tool_calls"] = calls
        elif role == "tool":
            name = msg.get("tool_name") or msg.get("name")
            match = next((c for c in unanswered if c[1] == name), unanswered[0] if unanswered else None)
            if match is not None:
                unanswered.remove(match)
                entry["tool_call_id"] = match[0]
        out.append(entry)
    return out


def chat_request(body: dict, model: str) -> dict:
    """POST /api/chat → POST /v1/chat/completions."""
    out: dict[str, Any] = {"model": model, "messages": chat_messages(body.get("messages"))}
    if isinstance(body.get("tools"), list) and body["tools"]:
        out["tools"] = body["tools"]  # Ollama's tools are OpenAI's
    return _common(body, out)


def generate_request(body: dict, model: str) -> tuple[str, dict]:
    """POST /api/generate → (path, body): the chat route (the model's template applies, as in
    Ollama), or with `raw` the plain completion route."""
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    if body.get("raw"):
        return "/v1/completions", _common(body, {"model": model, "prompt": prompt})
    messages = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
    return "/v1/chat/completions", _common(body, {"model": model, "messages": messages})


def embed_request(body: dict, model: str) -> dict:
    """POST /api/embed ({"input": str | [str]}) and the old /api/embeddings ({"prompt": str})
    → POST /v1/embeddings."""
    text = body.get("input") if "input" in body else body.get("prompt", "")
    out: dict[str, Any] = {"model": model, "input": text}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    return out


def _stats(usage: Any, timings: Any) -> dict:
    """Ollama's counters and durations (ns) from OpenAI's usage and llama-server's timings."""
    out: dict[str, int] = {}
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            out["eval_count"] = usage["completion_tokens"]
    if isinstance(timings, dict):
        prompt_ms, predicted_ms = timings.get("prompt_ms"), timings.get("predicted_ms")
        if isinstance(prompt_ms, (int, float)):
            out["prompt_eval_duration"] = int(prompt_ms * 1e6)
        if isinstance(predicted_ms, (int, float)):
            out["eval_duration"] = int(predicted_ms * 1e6)
        out["total_duration"] = out.get("prompt_eval_duration", 0) + out.get("eval_duration", 0)
        out["load_duration"] = 0
    return out


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"  # Ollama says "stop" after tool calls too


def _tool_calls(calls: Any) -> list[dict]:
    """OpenAI tool calls (arguments a JSON string, repaired if broken) → Ollama's (an object)."""
    out = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        name = fn.get("name") if isinstance(fn.get("name"), str) else "?"
        args = fn.get("arguments")
        arguments = args if isinstance(args, dict) else json.loads(repair_arguments(args or "{}", name)[0])
        out.append({"function": {"index": len(out), "name": name, "arguments": arguments}})
    return out


def chat_response(openai: Any, model: str, now: float) -> dict:
    """A /v1/chat/completions answer → an /api/chat answer."""
    choice = (openai.get("choices") or [{}])[0] if isinstance(openai, dict) else {}
    msg = choice.get("message") or {}
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("reasoning_content"):
        message["thinking"] = msg["reasoning_content"]
    if calls := _tool_calls(msg.get("tool_calls")):
        message["tool_calls"] = calls
    return {"model": model, "created_at": timestamp(now), "message": message, "done": True,
            "done_reason": _done_reason(choice.get("finish_reason")),
            **_stats(openai.get("usage"), openai.get("timings"))}


def generate_response(openai: Any, model: str, now: float) -> dict:
    """A /v1/chat/completions or /v1/completions answer → an /api/generate answer."""
    choice = (openai.get("choices") or [{}])[0] if isinstance(openai, dict) else {}
    msg = choice.get("message")
    text = (msg.get("content") if isinstance(msg, dict) else choice.get("text")) or ""
    out: dict[str, Any] = {"model": model, "created_at": timestamp(now), "response": text, "done": True,
                           "done_reason": _done_reason(choice.get("finish_reason"))}
    if isinstance(msg, dict) and msg.get("reasoning_content"):
        out["thinking"] = msg["reasoning_content"]
    return {**out, **_stats(openai.get("usage"), openai.get("timings"))}


def embed_response(openai: Any, model: str) -> dict:
    data = sorted((d for d in openai.get("data") or [] if isinstance(d, dict)), key=lambda d: d.get("index", 0))
    out: dict[str, Any] = {"model": model, "embeddings": [d.get("embedding") for d in data]}
    usage = openai.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        out["prompt_eval_count"] = usage["prompt_tokens"]
    return out


def embeddings_response(openai: Any) -> dict:
    """The old /api/embeddings: one `embedding`."""
    data = openai.get("data") or []
    return {"embedding": data[0].get("embedding") if data and isinstance(data[0], dict) else []}


def error_message(body: bytes) -> str:
    """The message of a backend's error body (OpenAI's shape, or anything else as text)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body.decode(errors="replace").strip() or "error"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return json.dumps(data)


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


class NDJSONStream:
    """An OpenAI SSE stream (chat or completion chunks) → Ollama's NDJSON lines, fed bytes in any
    split. Text flows at once; tool calls go out whole when the model finished them; the last
    line (`done: true`) comes after the backend's `[DONE]`, with the usage and timings."""

    def __init__(self, kind: str, model: str, clock: Callable[[], float] = time.time) -> None:
        assert kind in ("chat", "generate")
        self.kind, self.model, self.clock = kind, model, clock
        self._sse = SSEParser()
        self._calls: dict[int, dict] = {}
        self._finish: Any = None
        self._usage: Any = None
        self._timings: Any = None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(e.data) for e in self._sse.feed(data))

    def close(self) -> bytes:
        out = b"".join(self._event(e.data) for e in self._sse.close() if e.complete)
        if self._finish is not None and not self._done:
            out += self._final()  # the backend ended without [DONE]
        return out

    def cut(self) -> bytes:
        """The stream was cut before its end: what is complete, the tool calls held so far
        (repaired), and no last line (`done: true` would tell the client all went well)."""
        out = b"".join(self._event(e.data) for e in self._sse.close() if e.complete)
        if not self._done:
            out += self._held_calls()
            self._done = True  # nothing follows but the error line
        return out

    def _held_calls(self) -> bytes:
        if not self._calls:
            return b""
        calls = [{"function": c} for _, c in sorted(self._calls.items())]
        self._calls.clear()
        return _line(self._piece(tool_calls=_tool_calls(calls)))

    def _piece(self, text: str = "", thinking: str | None = None, **extra: Any) -> dict:
        head = {"model": self.model, "created_at": timestamp(self.clock())}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            message.update(extra)
            return {**head, "message": message, "done": False}
        out = {**head, "response": text, "done": False}
        if thinking:
            out["thinking"] = thinking
        return out

    def _final(self) -> bytes:
        self._done = True
        last = self._piece()
        last.update(done=True, done_reason=_done_reason(self._finish), **_stats(self._usage, self._timings))
        return _line(last)

    def _event(self, data: str | None) -> bytes:
        if data is None or self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._final()
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return b""
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk:
            return _line({"error": error_message(data.encode())})
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if chunk.get("timings"):
            self._timings = chunk["timings"]
        out = b""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            thinking = delta.get("reasoning_content")
            if text or thinking:
                out += _line(self._piece(text or "", thinking))
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                held = self._calls.setdefault(call.get("index", len(self._calls)), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                held["name"] += fn.get("name") or ""
                held["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                out += self._held_calls()
        return out
