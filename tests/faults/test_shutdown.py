"""SIGTERM to the switch: it exits 0 in time, ends the streams still open with an error event
after `shutdown_grace`, and leaves the models' units running for the next switch to adopt."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import aiohttp

from support.harness import chat_body, http_get, sse_lines


async def test_sigterm_during_a_long_stream_ends_it_with_an_error_event(deploy, user_manager):
    slow = deploy.scripted_unit("slow", {"routes": {"/v1/chat/completions": {
        "sse": {"repeat": {"choices": [{"index": 0, "delta": {"content": "x"}}]}, "count": 200}, "interval": 0.1}}})
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url}}, shutdown_grace="1s")
    lines: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.url + "/v1/chat/completions", json=chat_body("slow", stream=True)) as resp:
            assert resp.status == 200
            async for _, line in sse_lines(resp):
                lines.append(line)
                if len(lines) == 3:
                    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    assert "error" in events[-1], lines[-3:]
    assert events[-1]["error"]["code"] == "shutting_down"
    assert 3 <= len(events) - 1 < 200  # cut by the grace period, not finished
    # the model's unit keeps running, for the next switch to adopt
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [slow.unit]


def test_sigterm_exits_zero_and_leaves_the_model_running(deploy, tiny_models):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "a", "max_tokens": 4, "messages": [
                                     {"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
    t0 = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - t0 < 15
    assert deploy.um.active_units(f"*-{deploy.tag}@*") == [a.unit]
    assert http_get(a.url + "/health")[0] == 200
