"""An answer's usage (tokens, llama-server's timings) read from its last bytes: pure, no I/O.

The relay keeps only the last few chunks it relayed; `usage_of` finds OpenAI's `usage` (or
Anthropic's `input_tokens`/`output_tokens`) and llama-server's `timings` in them, whether they
end an SSE stream or a JSON body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tps: float | None = None
    generation_tps: float | None = None
    prompt_s: float | None = None  # llama-server's timings: prompt processing, generation
    generation_s: float | None = None

    def text(self) -> str:
        """`12 prompt + 40 completion tokens, prompt 310.2 tok/s, generation 25.1 tok/s`"""
        parts = [f"{_or_unknown(self.prompt_tokens)} prompt + {_or_unknown(self.completion_tokens)} completion tokens"]
        if self.prompt_tps is not None:
            parts.append(f"prompt {self.prompt_tps:.1f} tok/s")
        if self.generation_tps is not None:
            parts.append(f"generation {self.generation_tps:.1f} tok/s")
        return ", ".join(parts)

    def headers(self) -> dict[str, str]:
        """`X-LLM-Switch-*` headers, for an answer whose usage is known before its body goes out."""
        out = {}
        for name, value in (("Prompt-Tokens", self.prompt_tokens), ("Completion-Tokens", self.completion_tokens),
                            ("Prompt-Tokens-Per-Second", self.prompt_tps),
                            ("Generation-Tokens-Per-Second", self.generation_tps)):
            if value is not None:
                out[f"X-LLM-Switch-{name}"] = f"{value:.1f}" if isinstance(value, float) else str(value)
        return out


def _or_unknown(n: int | None) -> str:
    return "?" if n is None else str(n)


_DECODER = json.JSONDecoder()


def _object_after(text: str, key: str) -> dict | None:
    """The JSON object that follows the last `"key":` in `text`, if it parses."""
    at = text.rfind(f'"{key}"')
    if at < 0:
        return None
    start = text.find("{", at)
    if start < 0 or text[at + len(key) + 2:start].strip(" \t\r\n:"):
        return None
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(d: dict | None, key: str) -> float | None:
    value = d.get(key) if d else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _seconds(ms: float | None) -> float | None:
    return ms / 1000 if ms is not None else None


def _count(n: float | None) -> int | None:
    return int(n) if n is not None else None


def usage_of(tail: bytes, streamed_s: float | None = None) -> Usage | None:
    """An answer's usage from its last bytes: OpenAI's `usage`, llama-server's `timings`; None
    when it has neither. Without timings, generation tok/s is completion tokens over
    `streamed_s` (the time from the first to the last byte of a stream), where given."""
    at = min((i for i in (tail.rfind(b'"usage"'), tail.rfind(b'"timings"')) if i >= 0), default=-1)
    if at < 0:
        return None
    text = tail[at:].decode("utf-8", "replace")
    usage, timings = _object_after(text, "usage"), _object_after(text, "timings")
    if usage is None and timings is None:
        return None
    # OpenAI's names, else Anthropic's, else llama-server's timings
    prompt = _first(_number(usage, "prompt_tokens") or _number(usage, "input_tokens"), _number(timings, "prompt_n"))
    completion = _first(_number(usage, "completion_tokens") or _number(usage, "output_tokens"),
                        _number(timings, "predicted_n"))
    gen_tps = _number(timings, "predicted_per_second")
    if gen_tps is None and completion and streamed_s:
        gen_tps = completion / streamed_s
    return Usage(_count(prompt), _count(completion), _number(timings, "prompt_per_second"), gen_tps,
                 _seconds(_number(timings, "prompt_ms")), _seconds(_number(timings, "predicted_ms")))
