"""Tool-call repair of SSE streams: held arguments, parallel calls, text calls, framing, and the
property that any split of an upstream body relays to the same message as the non-streaming path."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from llm_switch.repair import StreamRepair, repair_arguments, repair_completion

pytestmark = pytest.mark.unit

# --- helpers -----------------------------------------------------------------------------------


def chunk(delta: dict | None = None, finish: str | None = None, index: int = 0, **top: Any) -> dict:
    c: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    c["choices"] = [] if delta is None else [{"index": index, "delta": delta, "finish_reason": finish}]
    c.update(top)
    return c


def sse(*items: dict | str, eol: str = "\n", indent: int | None = None) -> bytes:
    out = []
    for item in items:
        data = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, indent=indent)
        lines = data.split("\n")
        out.append("".join(f"data: {line}{eol}" for line in lines) + eol)
    return "".join(out).encode()


def tc(index: int, args: str | None = None, name: str | None = None, id_: str | None = None) -> dict:
    entry: dict[str, Any] = {"index": index}
    if name is not None:
        entry.update(id=id_ or f"call_{index}", type="function")
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    entry["function"] = fn
    return entry


def relay(body_parts: list[bytes], tools_offered: bool = False) -> tuple[bytes, StreamRepair]:
    r = StreamRepair(tools_offered)
    return b"".join(r.feed(p) for p in body_parts) + r.close(), r


def events(body: bytes) -> list[Any]:
    """Decode with the openai client's own SSE decoder."""
    return [json.loads(e.data) if e.data != "[DONE]" else "[DONE]" for e in SSEDecoder().iter_bytes(iter([body]))]


def accumulate(body: bytes) -> dict:
    """Fold a stream into one chat completion the way the OpenAI SDKs do (tool calls by index)."""
    choices: dict[int, dict] = {}
    usage = None
    for ev in events(body):
        if ev == "[DONE]":
            continue
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            c = choices.setdefault(ch["index"], {"index": ch["index"], "message": {}, "finish_reason": None, "_tc": {}})
            msg = c["message"]
            for key, value in (ch.get("delta") or {}).items():
                if key == "tool_calls":
                    for entry in value:
                        acc = c["_tc"].setdefault(entry["index"], {})
                        for k, v in entry.items():
                            if k == "index":
                                continue
                            if k == "function":
                                fn = acc.setdefault("function", {})
                                for fk, fv in v.items():
                                    fn[fk] = fn.get(fk, "") + fv if fk in fn else fv
                            elif k == "type" or k not in acc:
                                acc[k] = v
                            else:
                                acc[k] += v
                elif isinstance(value, str) and isinstance(msg.get(key), str) and key != "role":
                    msg[key] += value
                elif value is not None or key not in msg:
                    msg[key] = value
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
    out = []
    for i in sorted(choices):
        c = choices[i]
        tcs = c.pop("_tc")
        if tcs:
            c["message"]["tool_calls"] = list(tcs.values())  # dicts keep first-appearance order
        c["message"].setdefault("content", None)
        out.append(c)
    return {"choices": out, "usage": usage}


def args_of(body: bytes) -> list[str]:
    return [t["function"]["arguments"] for t in accumulate(body)["choices"][0]["message"].get("tool_calls", [])]


# --- behaviour, case by case ----------------------------------------------------------------


def test_text_only_stream_passes_byte_for_byte() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello, <b>wörld</b> {'a': 1,}"}),
        chunk({"reasoning_content": "hmm"}),
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
        "[DONE]",
    )
    for tools in (False, True):
        out, r = relay([body], tools)
        assert out == body
        assert r.repaired == []


def test_each_text_delta_comes_out_when_it_arrives() -> None:
    r = StreamRepair(tools_offered=True)
    assert r.feed(sse(chunk({"role": "assistant", "content": "Hi"}))) == sse(chunk({"role": "assistant", "content": "Hi"}))
    piece = sse(chunk({"content": " there"}))
    assert r.feed(piece[:10]) == b""  # half an event is not an event yet
    assert r.feed(piece[10:]) == piece


def test_broken_arguments_are_held_then_sent_repaired_in_one_delta() -> None:
    r = StreamRepair(tools_offered=True)
    head = r.feed(sse(chunk({"role": "assistant", "content": None, "tool_calls": [tc(0, "", "read_file")]})))
    [ev] = events(head)
    assert ev["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_0", "type": "function", "function": {"name": "read_file", "arguments": ""}}
    ]
    assert ev["choices"][0]["delta"]["content"] is None
    for frag in ["{'path'", ": 'a.py',", " 'n': 3,"]:
        assert r.feed(sse(chunk({"tool_calls": [tc(0, frag)]}))) == b""
    tail = r.feed(sse(chunk({}, "tool_calls"), "[DONE]"))
    evs = events(tail)
    assert evs[0]["choices"][0]["delta"]["tool_calls"] == [{"index": 0, "function": {"arguments": '{"path": "a.py", "n": 3}'}}]
    assert evs[0]["choices"][0]["finish_reason"] is None
    assert evs[1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert evs[2] == "[DONE]"
    assert r.close() == b""
    assert r.repaired == ["read_file"]


def test_valid_arguments_come_out_byte_identical() -> None:
    args = '{"path":"ü.py",  "n" : 1}'
    body = sse(
        chunk({"role": "assistant", "tool_calls": [tc(0, args[:5], "f")]}),
        chunk({"tool_calls": [tc(0, args[5:])]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    out, r = relay([body])
    assert args_of(out) == [args]
    assert r.repaired == []


def test_next_index_completes_a_valid_call_before_its_header() -> None:
    r = StreamRepair(tools_offered=False)
    r.feed(sse(chunk({"tool_calls": [tc(0, '{"a":', "f")]})))
    assert r.feed(sse(chunk({"tool_calls": [tc(0, " 1}")]}))) == b""
    out = r.feed(sse(chunk({"tool_calls": [tc(1, "", "g")]})))
    [ev] = events(out)
    assert ev["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "function": {"arguments": '{"a": 1}'}},
        {"index": 1, "id": "call_1", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]


def test_interleaved_parallel_calls_each_arrive_whole_and_in_order() -> None:
    body = sse(
        chunk({"role": "assistant", "tool_calls": [tc(0, "", "a")]}),
        chunk({"tool_calls": [tc(1, "", "b")]}),
        chunk({"tool_calls": [tc(0, "{'x': ")]}),
        chunk({"tool_calls": [tc(1, '{"y": "ü"')]}),
        chunk({"tool_calls": [tc(0, "1,}")]}),
        chunk({"tool_calls": [tc(1, ",}")]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    out, r = relay([body])
    msg = accumulate(out)["choices"][0]["message"]
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in msg["tool_calls"]] == [
        ("call_0", "a", '{"x": 1}'),
        ("call_1", "b", '{"y": "ü"}'),
    ]
    # clients see sequential calls: each call's arguments before the next call's header
    seen = []
    for ev in events(out):
        for ch in ev["choices"] if ev != "[DONE]" else []:
            for t in ch["delta"].get("tool_calls", []):
                seen.append((t["index"], "id" in t, t["function"].get("arguments")))
    assert seen == [(0, True, ""), (0, False, '{"x": 1}'), (1, True, '{"y": "ü"}')]
    assert r.repaired == ["a", "b"]


def test_indices_are_renumbered_in_order_of_appearance() -> None:
    body = sse(
        chunk({"tool_calls": [tc(3, '{"a": 1}', "late")]}),
        chunk({"tool_calls": [tc(1, '{"b": 2}', "early")]}),
        chunk({}, "tool_calls"),
    )
    out, _ = relay([body])
    indices = [t["index"] for ev in events(out) for ch in ev["choices"] for t in ch["delta"].get("tool_calls", [])]
    assert sorted(set(indices)) == [0, 1]
    assert [t["function"]["name"] for t in accumulate(out)["choices"][0]["message"]["tool_calls"]] == ["late", "early"]


def test_finish_reason_and_usage_in_the_same_chunk() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    body = sse(
        chunk({"tool_calls": [tc(0, "{a: 1", "f")]}),
        chunk({}, "tool_calls", usage=usage, timings={"predicted_ms": 1.0}),
        "[DONE]",
    )
    out, _ = relay([body])
    evs = [e for e in events(out) if e != "[DONE]"]
    assert evs[-1]["usage"] == usage and evs[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("usage" not in e for e in evs[:-1])
    assert args_of(out) == ['{"a": 1}']


def test_usage_only_chunk_passes_through() -> None:
    usage_chunk = sse(chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}))
    r = StreamRepair(tools_offered=False)
    r.feed(sse(chunk({"tool_calls": [tc(0, "{", "f")]}), chunk({}, "tool_calls")))
    assert r.feed(usage_chunk) == usage_chunk


def test_stream_that_ends_without_finish_or_done_is_flushed_on_close() -> None:
    r = StreamRepair(tools_offered=False)
    out = r.feed(sse(chunk({"tool_calls": [tc(0, '{"path": "/tm', "f")]})))
    out += r.close()
    assert args_of(out) == ['{"path": "/tm"}']


@pytest.mark.parametrize("args", ["", "garbage", "[1]"])
def test_empty_or_garbage_arguments_become_empty_object(args: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_switch.repair")
    body = sse(chunk({"tool_calls": [tc(0, args, "wipe_disk")]}), chunk({}, "tool_calls"), "[DONE]")
    out, r = relay([body])
    assert args_of(out) == ["{}"]
    assert r.repaired == ["wipe_disk"]
    assert any(rec.levelno == logging.WARNING and "wipe_disk" in rec.getMessage() for rec in caplog.records)


def test_late_fragment_after_a_complete_call_keeps_json_valid() -> None:
    body = sse(
        chunk({"tool_calls": [tc(0, '{"a": 1}', "f")]}),
        chunk({"tool_calls": [tc(1, '{"b": 2}', "g")]}),  # call 0 looked complete
        chunk({"tool_calls": [tc(0, '{"c": 3}')]}),  # ... but more came
        chunk({"tool_calls": [tc(0, " ")]}),
        chunk({}, "tool_calls"),
    )
    out, _ = relay([body])
    assert [json.loads(a) for a in args_of(out)] == [{"a": 1}, {"b": 2}]


def test_comments_and_crlf_framing_survive() -> None:
    body = (
        b": ping\r\n\r\n"
        + sse(chunk({"tool_calls": [tc(0, "{'a':", "f")]}), eol="\r\n")
        + b": ping\r\n\r\n"
        + sse(chunk({"tool_calls": [tc(0, "1}")]}), chunk({}, "tool_calls"), "[DONE]", eol="\r\n")
    )
    out, _ = relay([body[i : i + 3] for i in range(0, len(body), 3)])
    assert out.count(b": ping\r\n\r\n") == 2
    assert b"\n\n" not in out.replace(b"\r\n", b"")  # generated events use the upstream's CRLF
    assert args_of(out) == ['{"a": 1}']


def test_multiline_data_events_are_understood() -> None:
    body = sse(chunk({"tool_calls": [tc(0, "{'a': 1", "f")]}), chunk({}, "tool_calls"), "[DONE]", indent=2)
    out, _ = relay([body])
    assert args_of(out) == ['{"a": 1}']


def test_event_fields_are_kept() -> None:
    body = b"id: 7\n" + sse(chunk({"tool_calls": [tc(0, "{}", "f")]}))
    out, _ = relay([body])
    assert out.startswith(b"id: 7\ndata: ")


def test_non_json_and_error_events_pass_through() -> None:
    body = b"data: not json\n\n" + sse({"error": {"message": "boom", "code": 500}}) + b"event: x\ndata: [1]\n\n"
    out, _ = relay([body])
    assert out == body


def test_unterminated_last_event_goes_out_after_the_flush() -> None:
    r = StreamRepair(tools_offered=False)
    out = r.feed(sse(chunk({"tool_calls": [tc(0, "{a: 1", "f")]})) + b"data: {\"trunc")
    out += r.close()
    assert out.endswith(b'data: {"trunc')
    assert args_of(out) == ['{"a": 1}']


# --- calls written as text, streaming ---------------------------------------------------------


def test_text_calls_become_tool_calls_while_text_flows() -> None:
    r = StreamRepair(tools_offered=True)
    outs = [r.feed(sse(chunk({"role": "assistant", "content": "Let me look"})))]
    outs.append(r.feed(sse(chunk({"content": ".\n<tool"}))))
    outs.append(r.feed(sse(chunk({"content": '_call>\n{"name": "ls", "arguments": {"dir": "ü"}}\n</tool_call>'}))))
    outs.append(r.feed(sse(chunk({}, "stop"), "[DONE]")))
    assert events(outs[0])[0]["choices"][0]["delta"]["content"] == "Let me look"
    assert events(outs[1])[0]["choices"][0]["delta"]["content"] == ".\n"  # "<tool" is held
    [ev] = events(outs[2])
    [call] = ev["choices"][0]["delta"]["tool_calls"]
    assert call["function"] == {"name": "ls", "arguments": '{"dir": "ü"}'} and call["type"] == "function"
    assert events(outs[3])[0]["choices"][0]["finish_reason"] == "tool_calls"
    msg = accumulate(b"".join(outs))["choices"][0]["message"]
    assert msg["content"] == "Let me look.\n"
    assert r.repaired == ["ls"]


def test_a_less_than_sign_is_held_only_until_it_cannot_be_a_tag() -> None:
    r = StreamRepair(tools_offered=True)
    r.feed(sse(chunk({"role": "assistant", "content": "x"})))
    assert events(r.feed(sse(chunk({"content": "a <"}))))[0]["choices"][0]["delta"]["content"] == "a "
    assert events(r.feed(sse(chunk({"content": " b"}))))[0]["choices"][0]["delta"]["content"] == "< b"


def test_prose_mentioning_the_tag_is_released_at_once() -> None:
    r = StreamRepair(tools_offered=True)
    r.feed(sse(chunk({"role": "assistant", "content": "x"})))
    out = r.feed(sse(chunk({"content": "use <tool_call> tags"})))
    assert events(out)[0]["choices"][0]["delta"]["content"] == "use <tool_call> tags"


def test_leading_blank_content_before_a_text_call_is_dropped() -> None:
    body = sse(
        chunk({"role": "assistant", "content": "\n\n"}),
        chunk({"content": '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'}),
        chunk({}, "stop"),
    )
    out, _ = relay([body], tools_offered=True)
    msg = accumulate(out)["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "f"


def test_text_calls_are_not_touched_without_tools() -> None:
    body = sse(chunk({"content": '<tool_call>{"name": "f", "arguments": {}}</tool_call>'}), chunk({}, "stop"))
    out, _ = relay([body], tools_offered=False)
    assert out == body


# --- the property: any split, same message as the non-streaming path ------------------------

ARGS = [
    '{"path": "a.py"}',
    '{"a":1,"b":[1,2]}',
    '{"city": "Zürich", "note": "東京 🙂"}',
    '{"a": 1,}',
    "{'path': 'x'}",
    '{path: "x", n: 2}',
    '{"a": {"b": 1}',
    '{"path": "/tmp/fo',
    "",
    "garbage",
    '{"a": 1}{"b": 2}',
    '{"q": "say \\"hi\\""}',
    '  {"x": null}  ',
]
TEXT_TOKENS = ["Hello", " ", "\n", "ü", "東", "<", ">", "<b>", "<tool", "_call>", "</tool_call>", "{'a': 1,}", "a<b"]
TEXT_CALLS = [
    '<tool_call>\n{"name": "read", "arguments": {"path": "ü.py"}}\n</tool_call>',
    "<tool_call>{'name': 'write', 'arguments': {'x': 1,}}</tool_call>",
    "<tool_call>\n<function=grep>\n<parameter=pattern>\nfoo\n</parameter>\n</function>\n</tool_call>",
    '<tool_call>{"name": "trunc", "arguments": {"x": "abc',  # only valid as the last thing
]


def _split_text(draw: Any, s: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(s)), max_size=6))) | {0, len(s)})
    return [s[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


@st.composite
def upstream(draw: Any) -> tuple[bytes, bool]:
    tools_offered = draw(st.booleans())
    mode = draw(st.sampled_from(["text", "calls", "text-calls"]))
    content = "".join(draw(st.lists(st.sampled_from(TEXT_TOKENS), max_size=6)))
    if mode == "text-calls":
        picks = draw(st.lists(st.integers(0, len(TEXT_CALLS) - 2), max_size=3))
        content += "".join(TEXT_CALLS[i] + draw(st.sampled_from(["", "\n", " ok"])) for i in picks)
        if draw(st.booleans()):
            content += TEXT_CALLS[-1]
    chunks: list[dict] = [chunk({"role": "assistant", "content": None})]
    if draw(st.booleans()):
        chunks.append(chunk({"reasoning_content": "thinking <tool_call> about it"}))
    chunks += [chunk({"content": piece}) for piece in _split_text(draw, content)]
    finish = "stop"
    if mode == "calls":
        n = draw(st.integers(0, 3))
        seqs = []
        for i in range(n):
            frags = _split_text(draw, draw(st.sampled_from(ARGS))) or [""]
            first = frags.pop(0) if draw(st.booleans()) else ""
            seq = [tc(i, first, f"tool{i}", f"id{i}")] + [tc(i, f) for f in frags]
            seqs.append(seq)
        if draw(st.booleans()):  # interleave: headers first, then fragments in any order
            order = draw(st.permutations([i for i, s in enumerate(seqs) for _ in s[1:]]))
            chunks += [chunk({"tool_calls": [s[0]]}) for s in seqs]
            pos = [1] * n
            for i in order:
                chunks.append(chunk({"tool_calls": [seqs[i][pos[i]]]}))
                pos[i] += 1
        else:
            chunks += [chunk({"tool_calls": [e]}) for s in seqs for e in s]
        finish = "tool_calls" if n else "stop"
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    if draw(st.booleans()):
        chunks.append(chunk({}, finish, usage=usage))
    else:
        chunks += [chunk({}, finish), chunk(None, usage=usage)]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    indent = draw(st.sampled_from([None, None, 1]))
    items: list[dict | str] = list(chunks)
    if draw(st.booleans()):
        items.append("[DONE]")
    body = sse(*items, eol=eol, indent=indent)
    if draw(st.booleans()):
        body = b": keep-alive" + eol.encode() * 2 + body
    return body, tools_offered


def _normalise(completion: dict, upstream_args: list[str]) -> list[dict]:
    out = []
    for c in completion["choices"]:
        msg = dict(c["message"])
        if isinstance(msg.get("content"), str) and not msg["content"].strip() and msg.get("tool_calls"):
            msg["content"] = None
        calls = []
        for i, t in enumerate(msg.get("tool_calls") or []):
            args = t["function"]["arguments"]
            parsed = json.loads(args)
            assert isinstance(parsed, dict), args
            if i < len(upstream_args) and repair_arguments(upstream_args[i])[0] == upstream_args[i]:
                assert args == upstream_args[i]  # valid upstream arguments: byte-identical
            tid = t["id"] if t["id"].startswith("id") else "generated"
            calls.append((tid, t["type"], t["function"]["name"], parsed))
        msg["tool_calls"] = calls
        out.append({"message": msg, "finish_reason": c["finish_reason"]})
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upstream(), st.data())
def test_any_split_relays_the_same_message_as_the_non_streaming_path(case: tuple[bytes, bool], data: Any) -> None:
    body, tools_offered = case
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    bounds = sorted(set(cuts) | {0, len(body)})
    parts = [body[a:b] for a, b in zip(bounds, bounds[1:])]

    relayed, _ = relay(parts, tools_offered)
    streamed = accumulate(relayed)

    non_streaming = accumulate(body)
    upstream_args = [t["function"]["arguments"] for t in non_streaming["choices"][0]["message"].get("tool_calls", [])]
    repair_completion(non_streaming, tools_offered)

    assert _normalise(streamed, upstream_args) == _normalise(non_streaming, upstream_args)
    assert streamed["usage"] == non_streaming["usage"]
    assert relayed.endswith(b"[DONE]" + (b"\r\n" * 2 if b"\r\n" in body else b"\n\n")) == (b"[DONE]" in body)
    # the same bytes in one piece give the same relay (no dependence on the split)
    whole, _ = relay([body], tools_offered)
    assert _normalise(accumulate(whole), upstream_args) == _normalise(streamed, upstream_args)


def test_text_delta_latency_is_small() -> None:
    """Coarse guard (the real figures come from bench/repair_cost.py)."""
    r = StreamRepair(tools_offered=True)
    r.feed(sse(chunk({"role": "assistant", "content": "start"})))
    piece = sse(chunk({"content": " a word"}))
    t0 = time.perf_counter()
    for _ in range(1000):
        assert r.feed(piece)
    assert (time.perf_counter() - t0) / 1000 < 0.002
