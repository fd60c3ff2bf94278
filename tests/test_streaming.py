"""Streams through the switch: relayed chunk by chunk, and closed upstream when the client goes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from support.answers import delta
from support.harness import chat_body, post_json, sse_lines, wait_for


async def test_stream_is_relayed_chunk_by_chunk_not_buffered(deploy):
    chunks, interval = 6, 0.5
    s = deploy.scripted_unit("s", {"routes": {"/v1/chat/completions": {
        "sse": {"repeat": delta(), "count": chunks}, "interval": interval}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}}, loading_progress="off")  # the relayed bytes alone
    received: list[tuple[float, str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(daemon.url + "/v1/chat/completions",
                             json=chat_body("s", stream=True)) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            async for t, line in sse_lines(resp):
                received.append((t, line))
    lines = [line for _, line in received]
    assert lines == [f"data: {json.dumps(delta(str(i)))}" for i in range(chunks)] + \
        ["data: [DONE]"]
    sent = {r["i"]: r["t"] for r in s.records("chunk")}
    # the first chunk reached the client before the backend had even sent the last one
    assert received[0][0] < sent[chunks], (received[0][0], sent)
    # and the chunks arrived spread out, as they were sent (loose: half the sending span)
    assert received[-1][0] - received[0][0] > (chunks * interval) / 2


async def test_real_llama_server_stream(deploy, tiny_models):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(daemon.url + "/v1/chat/completions",
                             json=chat_body("a", stream=True, max_tokens=24)) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            lines = [line async for _, line in sse_lines(resp)]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert len(events) > 3
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text


async def test_client_disconnect_mid_stream_closes_the_upstream(deploy):
    count, interval = 100, 0.2  # 20 s if nobody stops it
    s = deploy.scripted_unit("s", {"routes": {"/v1/chat/completions": {
        "sse": {"repeat": delta(), "count": count}, "interval": interval}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}}, loading_progress="off")  # the relayed bytes alone
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        resp = await http.post(daemon.url + "/v1/chat/completions",
                               json=chat_body("s", stream=True))
        assert resp.status == 200
        got = 0
        async for _, line in sse_lines(resp):
            got += 1
            if got == 2:
                break
        resp.close()  # the client goes away mid-stream
    t_closed = time.time()
    [gone] = wait_for(lambda: s.records("disconnect"), 15,
                      what="the backend to see the upstream request closed")
    assert gone["t"] - t_closed < 10
    assert not s.records("complete")
    assert len(s.records("chunk")) < count
    # and the switch is fine afterwards
    async with aiohttp.ClientSession() as http:
        async with http.get(daemon.url + "/health") as resp:
            assert resp.status == 200
    assert "Traceback" not in daemon.log()


async def test_stalled_upstream_is_closed_when_the_client_gives_up(deploy):
    s = deploy.scripted_unit("s", {"routes": {"/v1/chat/completions": {
        "sse": [delta("0")], "done": False, "then": "stall"}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}}, loading_progress="off")  # the relayed bytes alone
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(daemon.url + "/v1/chat/completions",
                             json=chat_body("s", stream=True)) as resp:
            assert resp.status == 200
            async for _, line in sse_lines(resp):
                break
    wait_for(lambda: s.records("disconnect"), 15, what="the stalled upstream to be closed")


async def test_concurrent_streams_on_the_ready_model_run_side_by_side(deploy):
    """No lock is held while a response is generated: two streams overlap in time."""
    s = deploy.scripted_unit("s", {"routes": {
        "/v1/chat/completions": {"sse": {"repeat": delta(), "count": 6}, "interval": 0.3},
        "*": {"json": {"ok": True}}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        status, _, _ = await post_json(http, daemon.url + "/v1/completions",
                                       {"model": "s", "prompt": "warm up"})
        assert status == 200

        async def one() -> list[str]:
            async with http.post(daemon.url + "/v1/chat/completions",
                                 json=chat_body("s", stream=True)) as resp:
                return [line async for _, line in sse_lines(resp)]

        results = await asyncio.gather(one(), one())
    assert all(r[-1] == "data: [DONE]" for r in results)
    reqs = {r["n"]: r["t"] for r in s.records("request") if r["path"] == "/v1/chat/completions"}
    done = {r["n"]: r["t"] for r in s.records("complete")}
    first, second = sorted(reqs)
    assert reqs[second] < done[first], "the second stream waited for the first one"
