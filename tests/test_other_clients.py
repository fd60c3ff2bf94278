"""The other clients users have, through the switch, against real llama-server units (scripted
backends only for what a tiny model cannot show on demand: tool calls, whisper): the official
`anthropic` and `ollama` Python clients, a multipart transcription upload, rerank, infill and
the other native routes, and /upstream/{model}/…."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import httpx
import ollama
import openai
import pytest

from support.harness import post_json, wait_for

FIM = [arg for k, v in (("pre", 3), ("suf", 4), ("mid", 5))
       for arg in ("--override-kv", f"tokenizer.ggml.fim_{k}_token_id=int:{v}")]
TOOL = {"name": "read_file", "description": "read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def _anthropic_sse(*events: dict) -> list[dict]:
    return [{"raw": f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"} for e in events]


def test_anthropic_sdk_create_stream_count_and_errors(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}})
    client = anthropic.Anthropic(base_url=daemon.url, api_key="unused", timeout=120, max_retries=0)
    hello = [{"role": "user", "content": "hello"}]

    message = client.messages.create(model="a", max_tokens=8, messages=hello)
    assert message.type == "message" and message.role == "assistant"
    assert all(c.type == "text" for c in message.content) and message.usage.output_tokens > 0

    with client.messages.stream(model="b", max_tokens=12, messages=hello) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason in ("max_tokens", "end_turn")  # a random model may write its end token
    deltas = events.count("content_block_delta")
    assert deltas >= final.usage.output_tokens - 2  # relayed event by event: one per token (an end token aside)
    assert user_manager.active_units(f"llama-server-{deploy.tag}@*") == [b.unit]  # the switch happened

    assert client.messages.count_tokens(model="a", messages=hello).input_tokens > 0

    # tool use in the history, with an input the agent stored as broken JSON text: repaired
    # before llama-server sees it, and the conversation goes on
    history = [{"role": "user", "content": "read a.txt"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read_file",
                                                  "input": '{"path": "a.txt",'}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "hi"}]}]
    reply = client.messages.create(model="a", max_tokens=4, tools=[TOOL], messages=history)
    assert reply.type == "message"
    assert "repaired the input of 1 tool_use block(s) in the request history: read_file" in daemon.log()

    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=4, messages=hello)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    assert "a, b" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=None, max_tokens=4, messages=hello)  # type: ignore[arg-type]
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_anthropic_sdk_reads_tool_use_and_backend_errors(deploy):
    """A scripted backend plays llama-server's /v1/messages answers with tool_use blocks (a tiny
    model never writes one), then a backend error in OpenAI's shape."""
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.txt"}}
    start = {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "content": [],
                                                  "model": "tools", "stop_reason": None, "stop_sequence": None,
                                                  "usage": {"input_tokens": 3, "output_tokens": 0}}}
    script = {"routes": {"/v1/messages": [
        {"json": {"id": "m0", "type": "message", "role": "assistant", "model": "tools", "content": [tool_use],
                  "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 5}}},
        {"sse": _anthropic_sse(
            start,
            {"type": "content_block_start", "index": 0, "content_block": {**tool_use, "input": {}}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"path": '}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '"a.txt"}'}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
             "usage": {"output_tokens": 5}},
            {"type": "message_stop"}), "done": False, "interval": 0.01},
        {"status": 500, "json": {"error": {"code": 500, "message": "backend fell over", "type": "server_error"}}},
    ]}}
    tools = deploy.scripted_unit("tools", script)
    daemon = deploy.up({"tools": {"unit": tools.unit, "url": tools.url}})
    client = anthropic.Anthropic(base_url=daemon.url, api_key="unused", timeout=60, max_retries=0)
    ask = [{"role": "user", "content": "read a.txt"}]

    message = client.messages.create(model="tools", max_tokens=64, tools=[TOOL], messages=ask)
    assert message.stop_reason == "tool_use"
    assert [(c.type, c.name, c.input) for c in message.content] == [("tool_use", "read_file", {"path": "a.txt"})]

    with client.messages.stream(model="tools", max_tokens=64, tools=[TOOL], messages=ask) as stream:
        final = stream.get_final_message()
    assert [(c.type, c.input) for c in final.content] == [("tool_use", {"path": "a.txt"})]

    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="tools", max_tokens=8, messages=ask)
    assert info.value.body == {"type": "error", "error": {"type": "api_error", "message": "backend fell over"}}
    assert [r["body"]["messages"] for r in tools.records("request")] == [ask, ask, ask]


def test_ollama_client_chat_stream_generate_embed_list_ps(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    e = deploy.llama_unit("e", tiny_models["a"], extra_args=["--embeddings", "--pooling", "mean"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url},
                        "e": {"unit": e.unit, "url": e.url, "idle_unload": "10m"}})
    client = ollama.Client(host=daemon.url, timeout=120)
    active = lambda: user_manager.active_units(f"llama-server-{deploy.tag}@*")  # noqa: E731
    hello = [{"role": "user", "content": "hello"}]

    assert [m.model for m in client.list().models] == ["a", "b", "e"]
    assert httpx.get(daemon.url + "/api/version").json()["version"]

    reply = client.chat(model="a", messages=hello, options={"num_predict": 8})
    assert reply.done and reply.message.role == "assistant" and isinstance(reply.message.content, str)
    assert reply.eval_count and reply.eval_count > 0 and reply.prompt_eval_count > 0

    parts = list(client.chat(model="b:latest", messages=hello, stream=True, options={"num_predict": 12}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    # a line per token as they come (an end token, or one that is no text, has none)
    assert parts[-1].eval_count and len(parts) >= parts[-1].eval_count - 2
    assert parts[-1].done_reason in ("length", "stop")  # a random model may write its end token
    assert active() == [b.unit]

    generated = client.generate(model="a", prompt="the model", options={"num_predict": 6})
    assert generated.done and isinstance(generated.response, str)
    assert list(client.generate(model="a", prompt="x", stream=True, options={"num_predict": 6}))[-1].done

    embedded = client.embed(model="e", input=["hello", "world"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 64
    assert len(client.embeddings(model="e", prompt="hello").embedding) == 64

    running = client.ps().models
    assert [m.model for m in running] == ["e"]
    assert running[0].expires_at is not None and running[0].expires_at.year < 2300  # idle_unload 10m

    assert "tools" in client.show("a").capabilities

    # keep_alive 0: the model is unloaded once the answer is out
    client.chat(model="a", messages=hello, options={"num_predict": 4}, keep_alive=0)
    wait_for(lambda: a.unit not in active(), 30, what=f"{a.unit} stopped after keep_alive 0")
    assert client.ps().models == []
    # a request with nothing to answer loads a model; with keep_alive 0 it unloads it
    assert client.generate(model="b").done_reason == "load"
    assert active() == [b.unit]
    assert client.generate(model="b", keep_alive=0).done_reason == "unload"
    assert active() == []

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=hello)
    assert info.value.status_code == 404 and "a, b, e" in info.value.error


def test_ollama_client_tool_calls(deploy):
    """Tool calls in both directions: the model's (broken arguments, streamed and not) reach the
    client as objects; the client's history reaches the backend as OpenAI tool calls with ids."""
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{'city': 'Paris',}"}}
    answer = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [call]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me check. "}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": "{'city': "}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "'Paris'"}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    tools = deploy.scripted_unit("tools", {"routes": {"/v1/chat/completions": [
        {"json": answer}, {"sse": chunks, "interval": 0.01}, {"echo": True}]}})
    daemon = deploy.up({"tools": {"unit": tools.unit, "url": tools.url}})
    client = ollama.Client(host=daemon.url, timeout=60)
    weather = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    ask = [{"role": "user", "content": "weather in Paris?"}]

    reply = client.chat(model="tools", messages=ask, tools=[weather], stream=False)
    assert [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls] == [("get_weather", {"city": "Paris"})]

    parts = list(client.chat(model="tools", messages=ask, tools=[weather], stream=True))
    assert "".join(p.message.content for p in parts) == "Let me check. "
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert parts[-1].done

    history = ask + [{"role": "assistant", "content": "", "tool_calls": [
                         {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                     {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    client.chat(model="tools", messages=history, tools=[weather], stream=False)
    sent = tools.records("request")[-1]["body"]
    assert sent["messages"][1]["tool_calls"] == [{"id": "call_1_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0"}
    assert sent["tools"] == [weather] and sent["stream"] is False


def _rss_peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


async def test_audio_transcription_multipart_streams_through(deploy):
    """A scripted backend stands in for whisper: the switch finds the model in the form (before or
    after the file), and the backend gets the body byte for byte without the switch holding it."""
    whisper = deploy.scripted_unit("whisper", {"routes": {"/v1/audio/transcriptions": {"echo": True},
                                                          "/v1/audio/translations": {"json": {"text": "hello"}}}})
    other = deploy.scripted_unit("other", {})
    daemon = deploy.up({"whisper": {"unit": whisper.unit, "url": whisper.url},
                        "other": {"unit": other.unit, "url": other.url}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    audio = bytes(range(32, 127)) * 1000  # ASCII, so that the echo gives it back exactly

    raw = client.audio.transcriptions.with_raw_response.create(model="whisper", file=("a.wav", audio, "audio/wav"))
    echo = raw.http_response.json()
    assert echo["path"] == "/v1/audio/transcriptions"
    assert echo["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert 'name="model"\r\n\r\nwhisper\r\n' in echo["body"] and audio.decode() in echo["body"]
    assert client.audio.translations.create(model="whisper", file=("a.wav", audio)).text == "hello"

    big = b"0123456789abcdef" * (2 * 1024 * 1024)  # 32 MiB, the file before the model field
    async with aiohttp.ClientSession() as http:
        before = _rss_peak_kb(daemon.proc.pid)
        for order in ("file first", "model first"):
            form = aiohttp.FormData()
            if order == "model first":
                form.add_field("model", "whisper")
            form.add_field("file", big, filename="big.wav", content_type="audio/wav")
            if order == "file first":
                form.add_field("model", "whisper")
            form.add_field("response_format", "json")
            async with http.post(daemon.url + "/v1/audio/transcriptions", data=form,
                                 timeout=aiohttp.ClientTimeout(total=300)) as resp:
                assert resp.status == 200, await resp.text()
                await resp.content.readexactly(200)  # enough to know it was answered; the rest is the echo
        grown_mb = (_rss_peak_kb(daemon.proc.pid) - before) / 1024
    sent = [r for r in whisper.records("request") if r["path"] == "/v1/audio/transcriptions"][-2:]
    assert all(len(r["body"]) > len(big) for r in sent)
    assert grown_mb < 16, f"the switch's peak memory grew by {grown_mb:.0f} MB for a 32 MB upload"

    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", b"x", filename="a.wav")
        async with http.post(daemon.url + "/v1/audio/transcriptions", data=form) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "missing_model"
        status, body, _ = await post_json(http, daemon.url + "/v1/audio/transcriptions", {"model": "whisper"})
        assert status == 400 and body["error"]["code"] == "invalid_multipart"


async def test_rerank_infill_native_routes_and_upstream(deploy, tiny_models, user_manager):
    """llama-server's own routes for the model named in the body, and /upstream/{model}/…"""
    rr = deploy.llama_unit("rr", tiny_models["a"], extra_args=["--reranking"])
    fim = deploy.llama_unit("fim", tiny_models["b"], extra_args=FIM)  # FIM tokens the tiny vocab lacks
    daemon = deploy.up({"rr": {"unit": rr.unit, "url": rr.url}, "fim": {"unit": fim.unit, "url": fim.url}})
    active = lambda: user_manager.active_units(f"llama-server-{deploy.tag}@*")  # noqa: E731
    url = daemon.url
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/rerank", "/rerank"):
            status, body, _ = await post_json(http, url + path, {"model": "rr", "query": "switch",
                                                                  "documents": ["a switch", "a llama", "a unit"]})
            assert status == 200, body
            assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]

        status, body, _ = await post_json(http, url + "/infill", {"model": "fim", "input_prefix": "def f(",
                                                                   "input_suffix": "\n", "n_predict": 4})
        assert status == 200, body
        assert isinstance(body["content"], str) and body["tokens_predicted"] > 0
        assert active() == [fim.unit]

        status, body, _ = await post_json(http, url + "/tokenize", {"model": "fim", "content": "hello"})
        assert status == 200 and body["tokens"]
        status, back, _ = await post_json(http, url + "/detokenize", {"model": "fim", "tokens": body["tokens"]})
        assert status == 200 and back["content"].strip() == "hello"
        status, body, _ = await post_json(http, url + "/completion", {"model": "fim", "prompt": "the", "n_predict": 4})
        assert status == 200 and body["tokens_predicted"] > 0
        status, body, _ = await post_json(http, url + "/v1/responses", {"model": "fim", "input": "hi",
                                                                        "max_output_tokens": 4})
        assert status == 200 and body["object"] == "response"

        # the reranker cannot infill: llama-server's own answer comes back as it is
        status, body, _ = await post_json(http, url + "/infill", {"model": "rr", "input_prefix": "a", "input_suffix": "b"})
        assert status == 501 and "Infill is not supported" in body["error"]["message"]
        status, body, _ = await post_json(http, url + "/infill", {"input_prefix": "a"})
        assert status == 400 and body["error"]["code"] == "missing_model"

        async with http.get(url + "/upstream/fim/props") as resp:
            assert resp.status == 200
            assert "default_generation_settings" in await resp.json()
        async with http.get(url + "/upstream/rr/slots") as resp:  # switches to rr first
            assert resp.status == 200 and isinstance(await resp.json(), list)
        assert active() == [rr.unit]
        async with http.post(url + "/upstream/rr/tokenize?x=1", json={"content": "ab"}) as resp:
            assert resp.status == 200 and (await resp.json())["tokens"]
        async with http.get(url + "/upstream/rr", allow_redirects=False) as resp:
            assert resp.status == 308 and resp.headers["Location"] == "/upstream/rr/"
        async with http.get(url + "/upstream/nope/props") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
