"""What scripted backends answer: a chat completion saying "Hello world", whole and streamed, with
llama-server's usage and timings; a streamed chunk for long streams."""

from __future__ import annotations

WORDS = ["Hello", " wor", "ld"]
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
TIMINGS = {"prompt_n": 11, "prompt_ms": 22.0, "prompt_per_second": 500.0, "predicted_n": 3, "predicted_ms": 60.0,
           "predicted_per_second": 50.0}


def answer(model: str = "upstream-model") -> list[dict]:
    """A backend's streamed chat completion (ids and created of its own) saying "Hello world"."""
    base = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in WORDS]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE,
                   "timings": TIMINGS})
    return events


def whole_answer() -> dict:
    return {"id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                         "finish_reason": "stop"}], "usage": USAGE, "timings": TIMINGS}


def delta(i: str = "{i}") -> dict:
    """One streamed chunk saying `tok<i> ` (a script's "repeat" fills in {i})."""
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
