"""The pure parts of the other clients' routes, table by table: Ollama ↔ OpenAI translation, the
Anthropic history repair and error shape, the multipart field scanner, the wire dialects and the
rewrites of an answer, the LiteLLM model list. No I/O."""

from __future__ import annotations

import json

import pytest

from llm_switch.cli.litellm import base_url, model_list
from llm_switch.errors import QueueFull, UnknownModel
from llm_switch.errors import ShuttingDown
from llm_switch.http.dialects import ANTHROPIC, OLLAMA, OPENAI, dialect_for
from llm_switch.http.errors import error_body
from llm_switch.http.multipart import FieldScanner, MalformedForm, boundary_of, field_name
from llm_switch.http.rewrite import Head, Rewrite, hold_whole, then
from llm_switch.repair import StreamRepair
from llm_switch.translate import ollama as tr
from llm_switch.translate.anthropic import anthropic_error, repair_tool_uses

pytestmark = pytest.mark.unit

# -- Ollama -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("-1", -1.0),
    (-1, -1.0), ("-1m", -60.0), ("1.5h", 5400.0), ("500ms", 0.5), (None, None), ("soon", None), (True, None),
    ("5m3", None),
])
def test_keep_alive(value, seconds):
    assert tr.keep_alive_seconds(value) == seconds


def test_chat_request_maps_options_format_and_streaming():
    body = {"model": "coder:latest", "messages": [{"role": "user", "content": "hi"}],
            "options": {"temperature": 0.2, "num_predict": 7, "num_ctx": 4096, "stop": ["x"], "top_k": 5},
            "format": "json", "think": False}
    assert tr.chat_request(body, "coder") == {
        "model": "coder", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.2, "max_tokens": 7, "stop": ["x"],
        "top_k": 5, "response_format": {"type": "json_object"}, "chat_template_kwargs": {"enable_thinking": False}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = tr.chat_request({"messages": [], "stream": False, "format": schema, "options": {"num_predict": -1}}, "m")
    assert out == {"model": "m", "messages": [], "stream": False,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}}


def test_chat_history_with_tool_calls_images_and_results():
    messages = [
        {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "read", "arguments": {"path": "a.txt"}}},
            {"function": {"name": "list", "arguments": "{'dir': '.',}"}}]},
        {"role": "tool", "tool_name": "list", "content": "a.txt"},
        {"role": "tool", "content": "hello"},
    ]
    assert tr.chat_messages(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1_0", "type": "function", "function": {"name": "read", "arguments": '{"path": "a.txt"}'}},
            {"id": "call_1_1", "type": "function", "function": {"name": "list", "arguments": '{"dir": "."}'}}]},
        {"role": "tool", "content": "a.txt", "tool_call_id": "call_1_1"},  # by its tool's name
        {"role": "tool", "content": "hello", "tool_call_id": "call_1_0"},  # the one left
    ]


def test_generate_request_uses_the_chat_route_unless_raw():
    path, body = tr.generate_request({"prompt": "hi", "system": "be brief", "stream": False}, "m")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    path, body = tr.generate_request({"prompt": "hi", "raw": True}, "m")
    assert (path, body["prompt"], body["stream"]) == ("/v1/completions", "hi", True)


def test_embed_requests_and_answers():
    assert tr.embed_request({"input": ["a", "b"]}, "e") == {"model": "e", "input": ["a", "b"]}
    assert tr.embed_request({"prompt": "a"}, "e") == {"model": "e", "input": "a"}
    answer = {"data": [{"index": 1, "embedding": [0.2]}, {"index": 0, "embedding": [0.1]}],
              "usage": {"prompt_tokens": 4}}
    assert tr.embed_response(answer, "e") == {"model": "e", "embeddings": [[0.1], [0.2]], "prompt_eval_count": 4}
    assert tr.embeddings_response(answer) == {"embedding": [0.2]}


def test_chat_response_with_tool_calls_and_stats():
    answer = {"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "reasoning_content": "hmm",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1,}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5}, "timings": {"prompt_ms": 1.5, "predicted_ms": 2.0}}
    assert tr.chat_response(answer, "m", 0.0) == {
        "model": "m", "created_at": "1970-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": "", "thinking": "hmm",
                    "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]},
        "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 5,
        "prompt_eval_duration": 1_500_000, "eval_duration": 2_000_000, "total_duration": 3_500_000,
        "load_duration": 0}


def test_generate_response_from_either_route():
    chat = {"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]}
    plain = {"choices": [{"finish_reason": "stop", "text": "xyz"}]}
    assert tr.generate_response(chat, "m", 0.0)["response"] == "abc"
    assert tr.generate_response(chat, "m", 0.0)["done_reason"] == "length"
    assert tr.generate_response(plain, "m", 0.0)["response"] == "xyz"


def _sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def _lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def test_stream_text_then_tool_calls_then_done():
    sse = _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
               {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
               {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
               {"choices": [{"index": 0, "delta": {"tool_calls": [
                   {"index": 0, "id": "c1", "function": {"name": "get", "arguments": '{"q": '}}]}}]},
               {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}}]},
               {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
               {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}},
               b"[DONE]")
    for split in (1, 7, len(sse)):  # any split of the bytes gives the same lines
        stream = tr.NDJSONStream("chat", "m", clock=lambda: 0.0)
        out = b"".join(stream.feed(sse[i:i + split]) for i in range(0, len(sse), split)) + stream.close()
        lines = _lines(out)
        assert [ln["message"].get("content") for ln in lines] == ["Hel", "lo", "", ""]
        assert lines[2]["message"]["tool_calls"] == [{"function": {"index": 0, "name": "get", "arguments": {"q": "x"}}}]
        assert [ln["done"] for ln in lines] == [False, False, False, True]
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 4


def test_stream_generate_and_an_error_event():
    stream = tr.NDJSONStream("generate", "m", clock=lambda: 0.0)
    out = stream.feed(_sse({"choices": [{"index": 0, "text": "ab", "finish_reason": None}]},
                           {"error": {"message": "boom", "type": "server_error"}}))
    assert _lines(out) == [{"model": "m", "created_at": "1970-01-01T00:00:00.000000Z", "response": "ab",
                            "done": False}, {"error": "boom"}]
    assert stream.close() == b""  # no finish seen: no `done` line after a broken stream


def test_error_message_of_backend_bodies():
    assert tr.error_message(b'{"error": {"message": "bad", "type": "x"}}') == "bad"
    assert tr.error_message(b'{"error": "plain"}') == "plain"
    assert tr.error_message(b"not json\n") == "not json"


# -- Anthropic --------------------------------------------------------------------------------


def test_tool_use_input_as_broken_string_is_repaired():
    body = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"},
                                          {"type": "tool_use", "id": "t1", "name": "edit", "input": '{"path": "a",'},
                                          {"type": "tool_use", "id": "t2", "name": "ls", "input": {"dir": "."}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "{'not': 'touched'"}]},
    ]}
    assert repair_tool_uses(body) == ["edit"]
    assert body["messages"][1]["content"][1]["input"] == {"path": "a"}
    assert body["messages"][1]["content"][2]["input"] == {"dir": "."}
    assert body["messages"][2]["content"][0]["content"] == "{'not': 'touched'"
    assert repair_tool_uses({"messages": "nope"}) == []


@pytest.mark.parametrize("status, body, expected", [
    (400, b'{"error": {"code": 400, "message": "bad thing", "type": "invalid_request_error"}}',
     {"type": "error", "error": {"type": "invalid_request_error", "message": "bad thing"}}),
    (500, b'{"error": {"message": "oops"}}', {"type": "error", "error": {"type": "api_error", "message": "oops"}}),
    (404, b'{"error": "gone"}', {"type": "error", "error": {"type": "not_found_error", "message": "gone"}}),
])
def test_backend_errors_in_anthropic_shape(status, body, expected):
    assert json.loads(anthropic_error(status, body)) == expected


def test_anthropic_error_keeps_what_it_cannot_read():
    same = b'{"type": "error", "error": {"type": "overloaded_error", "message": "x"}}'
    assert anthropic_error(529, same) == same
    assert anthropic_error(500, b"text") == b"text"


# -- error shapes by route ----------------------------------------------------------------------


def test_error_shapes_by_path():
    e = UnknownModel.named("x", "a, b")
    assert error_body("/v1/chat/completions", 404, e.message, e.type, e.code) == {
        "error": {"message": e.message, "type": "invalid_request_error", "code": "model_not_found"}}
    assert error_body("/v1/messages", 404, e.message, e.type, e.code) == {
        "type": "error", "error": {"type": "not_found_error", "message": e.message}}
    assert error_body("/api/chat", 404, e.message, e.type, e.code) == {"error": e.message}
    q = QueueFull("busy", retry_after=2)
    assert dialect_for("/v1/messages").in_band(q).startswith(b"event: error\ndata: {\"type\": \"error\"")
    assert json.loads(dialect_for("/api/chat").in_band(q)) == {"error": "busy"}
    assert dialect_for("/v1/chat/completions").in_band(q).startswith(b"data: {\"error\": {")


@pytest.mark.parametrize("dialect, keep_alive, own_error", [
    (OPENAI, b": loading m\n\n", b'data: {"error": {"message": "x"}}\n\n'),
    (ANTHROPIC, b": loading m\n\n", None),  # the message goes into Anthropic's shape instead
    (OLLAMA, None, None),  # NDJSON has no line a client ignores
])
def test_dialect_keep_alive_and_backend_errors(dialect, keep_alive, own_error):
    assert dialect.keep_alive("loading m") == keep_alive
    assert dialect.backend_error({"error": {"message": "x"}}) == own_error
    assert dialect.backend_error("not an error") is None


# -- rewrites of an answer ----------------------------------------------------------------------


def test_head_and_hold_whole():
    assert Head(200, "text/event-stream").event_stream and not Head(200, "application/json").event_stream
    whole = hold_whole(bytes.upper, "text/plain")
    assert whole.feed(b"ab") == b"" and whole.feed(b"c") == b""
    assert whole.close() == b"ABC" and whole.content_type == "text/plain"


def test_then_feeds_the_first_into_the_second():
    first = Rewrite(bytes.upper, lambda: b"<end>", None, lambda: b"<cut>")
    second = Rewrite(lambda b: b"[" + b + b"]", lambda: b"!", "text/x")
    both = then(first, second)
    assert both.feed(b"a") == b"[A]" and both.content_type == "text/x"
    assert both.close() == b"[<end>]!"
    assert both.cut_short() == b"[<cut>]!"  # cut: the second has no cut of its own, so its close
    assert then(None, second) is second


TOOL_CALL_BEGUN = [{"choices": [{"index": 0, "delta": {"content": "ok"}}]},
                   {"choices": [{"index": 0, "delta": {"tool_calls": [
                       {"index": 0, "id": "c1", "function": {"name": "get", "arguments": '{"q": "x'}}]}}]}]


def test_ollama_stream_cut_sends_held_calls_repaired_and_no_done_line():
    stream = tr.NDJSONStream("chat", "m", clock=lambda: 0.0)
    lines = _lines(stream.feed(_sse(*TOOL_CALL_BEGUN)) + stream.cut())
    assert [ln["message"]["content"] for ln in lines] == ["ok", ""]
    assert lines[1]["message"]["tool_calls"] == [{"function": {"index": 0, "name": "get", "arguments": {"q": "x"}}}]
    assert [ln["done"] for ln in lines] == [False, False]  # no `done: true`: the error line follows
    assert stream.feed(_sse({"choices": [{"index": 0, "delta": {"content": "late"}}]})) == b""


def test_ollama_stream_cut_through_tool_call_repair():
    fixer, ndjson = StreamRepair(True), tr.NDJSONStream("chat", "m", clock=lambda: 0.0)
    both = then(Rewrite(fixer.feed, fixer.close), Rewrite(ndjson.feed, ndjson.close, tr.NDJSON, ndjson.cut))
    lines = _lines(both.feed(_sse(*TOOL_CALL_BEGUN)) + both.cut_short())
    assert lines[-1]["message"]["tool_calls"][0]["function"]["arguments"] == {"q": "x"}
    assert not any(ln["done"] for ln in lines)
    assert json.loads(OLLAMA.in_band(ShuttingDown("stopped"))) == {"error": "stopped"}


# -- multipart ------------------------------------------------------------------------------------

B = b"----b0und4ry"


def form(*parts: tuple[bytes, bytes]) -> bytes:
    out = b""
    for headers, value in parts:
        out += b"--" + B + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + B + b"--\r\n"


FILE = (b'Content-Disposition: form-data; name="file"; filename="model.wav"\r\nContent-Type: audio/wav',
        b"RIFF" + b"\x00\r\n--" + b"x" * 3000 + b"name=\"model\"")
MODEL = (b'Content-Disposition: form-data; name="model"', b"whisper")


@pytest.mark.parametrize("body", [form(MODEL, FILE), form(FILE, MODEL),
                                  form((b'content-disposition: form-data; name=model', b"whisper"), FILE),
                                  b"preamble\r\n" + form(FILE, MODEL)])
def test_scanner_finds_the_model_field_in_any_split(body):
    for split in (1, 5, 64, len(body)):
        scanner = FieldScanner(B, "model")
        found = None
        for i in range(0, len(body), split):
            found = scanner.feed(body[i:i + split])
            if found is not None:
                break
        assert found == "whisper"


def test_scanner_ends_without_the_field_and_rejects_garbage():
    scanner = FieldScanner(B, "model")
    assert scanner.feed(form(FILE)) is None and scanner.ended
    with pytest.raises(MalformedForm):
        FieldScanner(B, "model").feed(b"--" + B + b"garbage\r\n")
    huge = form((MODEL[0], b"m" * 10_000))
    with pytest.raises(MalformedForm):
        FieldScanner(B, "model").feed(huge)


def test_boundary_and_field_name():
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of("multipart/form-data; charset=utf-8; boundary=xyz") == b"xyz"
    assert boundary_of("application/json") is None
    assert field_name(b'Content-Disposition: form-data; filename="f"; name="file"') == b"file"
    assert field_name(b'Content-Disposition: form-data; filename="name=x"') is None


# -- LiteLLM ------------------------------------------------------------------------------------


def test_model_list_balances_a_name_over_hosts():
    config = model_list([("http://a:3002", [{"id": "coder", "aliases": ["c"]}, {"id": "embed"}]),
                         ("http://b:3002", [{"id": "coder"}])])
    deployments = [(e["model_name"], e["litellm_params"]["api_base"]) for e in config["model_list"]]
    assert deployments == [("coder", "http://a:3002/v1"), ("c", "http://a:3002/v1"),
                           ("embed", "http://a:3002/v1"), ("coder", "http://b:3002/v1")]
    assert all(e["litellm_params"]["model"] == "openai/" + e["model_name"] for e in config["model_list"])
    assert "*" not in {e["model_name"] for e in config["model_list"]}


@pytest.mark.parametrize("host, url", [("gpu:3002", "http://gpu:3002"), ("http://gpu:3002/v1/", "http://gpu:3002"),
                                       ("https://x", "https://x")])
def test_base_url(host, url):
    assert base_url(host) == url
