"""Loading progress in streamed answers, read by the official openai clients (Python and npm):
a streamed chat completion that waits for a load gets its stream at once, progress as
`reasoning_content` (or SSE comments), then the answer with the same id, created and model;
a failed load ends the stream with an error event; unstreamed requests are unchanged."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import urllib.request

import aiohttp
import anthropic
import openai
import pytest

from support import harness
from support.harness import chat_body, free_port, post_json, sse_lines
from support.answers import WORDS, answer, whole_answer
from support.node import NODE_DIR, npm_ready

SCRIPT = {"routes": {"/v1/chat/completions": {"sse": answer(), "interval": 0.02},
                     "/v1/completions": {"sse": [{"id": "cmpl-1", "object": "text_completion", "created": 1,
                                                   "model": "m", "choices": [{"index": 0, "text": "hi"}]}]}}}


def post(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as resp:
        return json.loads(resp.read())


def two_models(deploy, *, b_loads_in: float = 2.0, **top):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": [{"delay": 1.5, "json": whole_answer()},
                                                                       {"json": whole_answer()}]}})
    b = deploy.scripted_unit("b", {"health": {"ok_after": b_loads_in}, **SCRIPT})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       min_loaded=0.01, **top)
    return daemon, a, b


def delta_field(chunk, name: str) -> str:
    if not chunk.choices:
        return ""
    delta = chunk.choices[0].delta
    value = getattr(delta, name, None)
    if value is None and delta.model_extra:
        value = delta.model_extra.get(name)
    return value or ""


def test_python_client_reads_progress_as_reasoning_and_the_answer_alone(deploy):
    daemon, _, _ = two_models(deploy)
    post(daemon.url + "/load/a")
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    chunks = list(client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    content = "".join(delta_field(c, "content") for c in chunks)
    reasoning = "".join(delta_field(c, "reasoning_content") for c in chunks)
    assert content == "Hello world"  # the answer alone: no progress in it
    assert "loading b" in reasoning and "b ready in" in reasoning, reasoning
    assert reasoning.count("\n") >= 2, reasoning
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id != "chatcmpl-upstream"
    assert {c.created for c in chunks} == {chunks[0].created}
    assert {c.model for c in chunks} == {"b"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    harness.wait_for(lambda: "b: 11 prompt + 3 completion tokens, prompt 500.0 tok/s, generation 50.0 tok/s"
                     in daemon.log(), 10, what="the answer's log line")  # written once the stream ended

    # loaded now: no wait, no progress, the backend's answer byte for byte as before
    again = list(client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(delta_field(c, "content") for c in again) == "Hello world"
    assert not "".join(delta_field(c, "reasoning_content") for c in again)
    assert {c.id for c in again} == {"chatcmpl-upstream"}


async def test_comment_mode_and_other_streams_get_comment_lines_while_the_model_is_busy(deploy):
    """With loading_progress: comment the client sees only SSE comments (which clients ignore):
    first that a's request must finish, then b's load; /v1/completions gets comments whatever
    the setting. An unstreamed request that waits gets its answer unchanged."""
    daemon, a, _ = two_models(deploy, loading_progress="comment")
    post(daemon.url + "/load/a")
    async with aiohttp.ClientSession() as http:
        busy = asyncio.ensure_future(post_json(http, daemon.url + "/v1/chat/completions", chat_body("a")))
        await harness.wait_for_async(lambda: a.records("request"), 30,  # its backend takes 1.5 s to answer
                                     what="a's request in flight")
        async with http.post(daemon.url + "/v1/chat/completions", json=chat_body("b", stream=True)) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            lines = [line async for _, line in sse_lines(resp)]
        assert (await busy)[0] == 200
        comments = [line for line in lines if line.startswith(":")]
        data = [json.loads(line[5:]) for line in lines if line.startswith("data: {")]
        assert any("a finishes 1 request(s), then b loads" in c for c in comments), comments
        assert any(c.startswith(": loading b") for c in comments), comments
        assert any("b ready in" in c for c in comments), comments
        assert "".join(d["choices"][0]["delta"].get("content") or "" for d in data) == "Hello world"
        assert {d["id"] for d in data} == {"chatcmpl-upstream"}  # comments only: the answer as it came
        assert not any("reasoning_content" in d["choices"][0]["delta"] for d in data)

        post(daemon.url + "/unload/b")
        async with http.post(daemon.url + "/v1/completions",
                             json={"model": "b", "prompt": "x", "stream": True}) as resp:
            lines = [line async for _, line in sse_lines(resp)]
        assert any(line.startswith(": loading b") for line in lines), lines
        assert lines[-1] == "data: [DONE]"

        # not streamed: a plain JSON answer (a stops b and loads), the wait in a header only
        status, body, resp = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("a"))
        assert status == 200 and body["choices"][0]["message"]["content"] == "Hello world"
        assert resp.content_type == "application/json"
        assert float(resp.headers["X-LLM-Switch-Waited-Seconds"]) > 0
        assert resp.headers["X-LLM-Switch-Completion-Tokens"] == "3"
        assert resp.headers["X-LLM-Switch-Generation-Tokens-Per-Second"] == "50.0"


async def test_a_failed_load_ends_the_stream_with_an_error_event(deploy):
    dying = deploy.command_unit("dying", ["/bin/sh", "-c", "sleep 0.5; exit 3"])
    daemon = deploy.up({"dying": {"unit": dying.unit, "url": "http://127.0.0.1:9"}})
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.url + "/v1/chat/completions", json=chat_body("dying", stream=True)) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            lines = [line async for _, line in sse_lines(resp)]
    assert lines[-1].startswith("data: {\"error\""), lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "start_failed" and "dying" in error["message"], error
    progress = [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]
    assert progress and all(p["object"] == "chat.completion.chunk" for p in progress)

    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model="dying", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "dying" in str(info.value.message)


async def test_a_backend_error_after_the_wait_is_an_error_event(deploy):
    """The status line went out with the progress: the backend's own error follows as an event."""
    refusing = deploy.scripted_unit("r", {"health": {"ok_after": 1.0}, "routes": {"/v1/chat/completions": {
        "status": 400, "json": {"error": {"message": "context too long", "type": "invalid_request_error",
                                          "code": "ctx"}}}}})
    daemon = deploy.up({"r": {"unit": refusing.unit, "url": refusing.url}})
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.url + "/v1/chat/completions", json=chat_body("r", stream=True)) as resp:
            assert resp.status == 200
            lines = [line async for _, line in sse_lines(resp)]
    assert "loading r" in lines[0], lines
    assert json.loads(lines[-1][6:]) == {"error": {"message": "context too long", "type": "invalid_request_error",
                                                   "code": "ctx"}}


async def test_a_client_that_leaves_while_waiting_sends_nothing_on(deploy):
    """A client gone during the progress never reaches the backend; its place in the books is
    freed, and the load it started still completes."""
    daemon, _, b_unit = two_models(deploy)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(daemon.url + "/v1/chat/completions", json=chat_body("b", stream=True))
        async for _, line in sse_lines(resp):
            assert "loading b" in line or "waiting" in line, line
            break
        resp.close()
    harness.wait_for(lambda: {m["model"]: m for m in daemon.get_json("/status")["models"]}["b"]["state"] == "ready",
                     30, what="b ready")
    b = {m["model"]: m for m in daemon.get_json("/status")["models"]}["b"]
    assert (b["in_flight"], b["waiting"]) == (0, 0)
    assert not b_unit.records("request")


async def test_anthropic_stream_that_waits_gets_comments_and_the_sdk_reads_it(deploy, tiny_models):
    """/v1/messages (Anthropic's API) waiting for a load gets SSE comments, which the official
    anthropic SDK skips: the text is the same as from a stream that did not wait."""
    server, env = deploy.llama
    port = free_port()
    argv = harness.llama_args(server, tiny_models["a"], port, "slow")
    slow = deploy.command_unit("slow", ["/bin/sh", "-c", "sleep 1.5; exec " + shlex.join(argv)], port=port, env=env)
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url}})
    ask = {"model": "slow", "max_tokens": 12, "messages": [{"role": "user", "content": "hello"}],
           "extra_body": {"temperature": 0}}  # greedy: the same text each time
    async with aiohttp.ClientSession() as http:
        raw = {k: v for k, v in ask.items() if k != "extra_body"}
        async with http.post(daemon.url + "/v1/messages", json={**raw, "stream": True}) as resp:
            lines = [line async for _, line in sse_lines(resp)]
    assert lines[0].startswith(": loading slow") and any("slow ready in" in line for line in lines), lines
    assert "event: message_stop" in lines

    client = anthropic.Anthropic(base_url=daemon.url, api_key="unused", timeout=120, max_retries=0)
    post(daemon.url + "/unload/slow")
    with client.messages.stream(**ask) as stream:
        waited = stream.get_final_text()
    with client.messages.stream(**ask) as stream:
        loaded = stream.get_final_text()
    assert waited == loaded


@pytest.mark.parametrize("pkg,mode", [("openai", "iterate"), ("openai", "final"), ("openai-v5", "iterate")])
def test_node_openai_package_reads_progress_and_the_answer_alone(deploy, pkg, mode):
    npm_ready()
    daemon, _, _ = two_models(deploy, b_loads_in=1.5)
    post(daemon.url + "/load/a")  # b has to wait: a stops, b loads
    res = subprocess.run(["node", "progress.mjs", pkg, daemon.url + "/v1", "b", mode], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"node failed:\n{res.stderr}\n{res.stdout[-2000:]}"
    out = json.loads(res.stdout)
    assert out["content"] == "Hello world"
    assert len(set(out["ids"])) == 1 and len(set(out["created"])) == 1 and set(out["models"]) == {"b"}, out
    assert out["chunks"] >= len(WORDS) + 3  # progress chunks came first
    if mode == "iterate":
        assert "loading b" in out["reasoning"] and "b ready in" in out["reasoning"], out


def test_real_llama_server_answer_is_the_same_after_a_wait(deploy, tiny_models):
    """With a real llama-server (greedy, fixed seed): the streamed answer that waited for a switch
    is the same text as the one that did not."""
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}}, min_loaded=0.01)
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    ask = {"model": "b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "temperature": 0,
           "seed": 7, "stream": True}
    post(daemon.url + "/load/a")
    waited = list(client.chat.completions.create(**ask))
    loaded = list(client.chat.completions.create(**ask))
    text = "".join(delta_field(c, "content") for c in loaded)
    assert text and "".join(delta_field(c, "content") for c in waited) == text
    assert len({c.id for c in waited}) == 1


def test_loading_progress_config_global_and_per_model():
    from llm_switch.config import parse
    from llm_switch.errors import ConfigError

    c = parse("loading_progress: off\nmodels:\n  a: {unit: a.service, loading_progress: comment}\n  b: b.service\n")
    assert (c.models["a"].loading_progress, c.models["b"].loading_progress) == ("comment", "off")
    assert parse("models:\n  a: a.service\n").models["a"].loading_progress == "reasoning"
    with pytest.raises(ConfigError, match=r"models\.a\.loading_progress: must be one of reasoning, comment, off"):
        parse("models:\n  a: {unit: a.service, loading_progress: loud}\n")
