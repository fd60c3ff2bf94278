"""SIGTERM to the switch while an Anthropic or an Ollama stream is relayed: past shutdown_grace the
stream ends in its own dialect, with the tool calls held so far sent first (the OpenAI stream's
case is in test_shutdown.py)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import aiohttp

from support.harness import sse_lines

TOOLS = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]


async def _cut_by_sigterm(deploy, user_manager, path: str, route: str, events: list, body: dict,
                          begun: Callable[[str], bool]) -> list[str]:
    """The lines of a stream during which the switch got SIGTERM (at the first line `begun`)."""
    slow = deploy.scripted_unit("slow", {"routes": {route: {"sse": events, "interval": 0.1, "done": False}}})
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url}}, shutdown_grace="1s")
    lines: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.url + path, json={"model": "slow", "stream": True, **body}) as resp:
            assert resp.status == 200, await resp.text()
            async for _, line in sse_lines(resp):
                if begun(line) and not any(begun(seen) for seen in lines):
                    daemon.proc.send_signal(signal.SIGTERM)
                lines.append(line)
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0, daemon.log()
    # the model's unit keeps running, for the next switch to adopt
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [slow.unit]
    return lines


def _openai_chunk(delta: dict) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


async def test_sigterm_cuts_an_ollama_stream_with_held_tool_calls_then_an_error_line(deploy, user_manager):
    begin = {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                             "function": {"name": "get", "arguments": '{"q": "x'}}]}
    more = {"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}  # the call goes on, never ends
    events = [_openai_chunk({"role": "assistant", "content": "ok"}), _openai_chunk(begin)] + [_openai_chunk(more)] * 200
    lines = await _cut_by_sigterm(deploy, user_manager, "/api/chat", "/v1/chat/completions", events,
                                  {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS},
                                  begun=lambda line: '"ok"' in line)
    objects = [json.loads(line) for line in lines]  # NDJSON: every line one object
    assert objects[0]["message"]["content"] == "ok"
    assert objects[-2]["message"]["tool_calls"] == [{"function": {"index": 0, "name": "get", "arguments": {"q": "x"}}}]
    assert not any(o.get("done") for o in objects), objects  # `done: true` would say all went well
    assert set(objects[-1]) == {"error"} and "shutdown_grace" in objects[-1]["error"], objects[-1]


async def test_sigterm_cuts_an_anthropic_stream_with_an_error_event(deploy, user_manager):
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
    events = [{"raw": "event: message_start\ndata: " + json.dumps({"type": "message_start"}) + "\n\n"}]
    events += [{"raw": "event: content_block_delta\ndata: " + json.dumps(delta) + "\n\n"}] * 200
    lines = await _cut_by_sigterm(deploy, user_manager, "/v1/messages", "/v1/messages", events,
                                  {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
                                  begun=lambda line: line == "event: content_block_delta")
    assert lines[-2] == "event: error", lines[-4:]
    error = json.loads(lines[-1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
    assert "shutdown_grace" in error["error"]["message"]
    assert 1 <= lines.count("event: content_block_delta") < 200  # cut by the grace period, not finished
    assert not any(line.startswith('data: {"error"') for line in lines)  # never OpenAI's shape
