"""Tool-call repair, non-streaming: arguments, request history, completions, calls written as text."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from llm_switch.repair import parse_text_call, repair_arguments, repair_completion, repair_request

pytestmark = pytest.mark.unit

VALID = [
    '{"a": 1}',
    '{"a":1}',
    '  {"a": 1}\n',
    '{"path": "C:\\\\tmp", "q": "\\"x\\""}',
    '{"text": "Zürich 東京 🙂"}',
    '{"text": "\\u00fc escaped stays escaped"}',
    '{}',
    '{"nested": {"list": [1, 2.5, null, true]}}',
    '{"a": 1, "a": 2}',
]


@pytest.mark.parametrize("args", VALID)
def test_valid_arguments_stay_byte_identical(args: str) -> None:
    assert repair_arguments(args, "f") == (args, False)


BROKEN = [
    # (case, input, expected object)
    ("trailing comma", '{"a": 1,}', {"a": 1}),
    ("trailing comma in list", '{"a": [1, 2,]}', {"a": [1, 2]}),
    ("single quotes", "{'path': 'src/main.py'}", {"path": "src/main.py"}),
    ("unquoted keys", '{path: "a.txt", line: 3}', {"path": "a.txt", "line": 3}),
    ("missing closing brace", '{"a": {"b": 1}', {"a": {"b": 1}}),
    ("missing all closing", '{"a": [1, {"b": 2', {"a": [1, {"b": 2}]}),
    ("truncated string", '{"path": "/tmp/fo', {"path": "/tmp/fo"}),
    ("two concatenated objects", '{"a": 1}{"b": 2}', {"a": 1}),
    ("object then text", '{"a": 1} trailing words', {"a": 1}),
    ("non-ascii broken", "{'city': 'Zürich', 'note': '東京',}", {"city": "Zürich", "note": "東京"}),
    ("double encoded", json.dumps('{"a": 1}'), {"a": 1}),
    ("markdown fence", '```json\n{"a": 1}\n```', {"a": 1}),
    ("python literals", "{'ok': True, 'none': None}", {"ok": True, "none": None}),
]


@pytest.mark.parametrize("case,args,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_arguments_become_a_json_object(case: str, args: str, expected: dict) -> None:
    fixed, changed = repair_arguments(args, "f")
    assert changed
    assert json.loads(fixed) == expected


def test_two_concatenated_objects_keep_the_first_one_byte_for_byte() -> None:
    assert repair_arguments('{"a":1}{"b":2}', "f") == ('{"a":1}', True)


def test_non_ascii_is_written_as_is_not_escaped() -> None:
    fixed, _ = repair_arguments("{'city': 'Zürich 東京',}", "f")
    assert fixed == '{"city": "Zürich 東京"}'


FALLBACK = [
    ("empty", ""),
    ("blank", "  \n"),
    ("garbage", "garbage"),
    ("json array", "[1, 2]"),
    ("json string", '"hello"'),
    ("json number", "42"),
    ("json null", "null"),
    ("NaN", '{"a": NaN}'),  # Python's json accepts it, llama-server does not
]


@pytest.mark.parametrize("case,args", FALLBACK, ids=[f[0] for f in FALLBACK])
def test_unrepairable_arguments_become_empty_object_with_a_warning(
    case: str, args: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_switch.repair")
    fixed, changed = repair_arguments(args, "read_file")
    assert changed
    assert isinstance(json.loads(fixed), dict)
    if case != "NaN":
        assert fixed == "{}"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "read_file" in warnings[0].getMessage()


def test_argument_content_is_never_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_switch.repair")
    repair_arguments("secret-token-xyz not json", "f")
    repair_arguments("{'secret': 'secret-token-xyz',}", "f")
    for r in caplog.records:
        if r.levelno > logging.DEBUG:
            assert "secret-token-xyz" not in r.getMessage()


@pytest.mark.parametrize(
    "value,expected",
    [({"a": "ü"}, '{"a": "ü"}'), (None, "{}"), ([1], "{}"), (3, "{}")],
)
def test_non_string_arguments(value: object, expected: str) -> None:
    assert repair_arguments(value, "f") == (expected, True)


# --- request history ---------------------------------------------------------------------


def call(name: str, args: object, id_: str = "c1") -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


def test_request_history_is_repaired_and_names_returned() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi {'not': 'touched',}"},
            {"role": "assistant", "content": "", "tool_calls": [call("a", "{'x': 1,}"), call("b", '{"ok": 1}', "c2")]},
            {"role": "tool", "tool_call_id": "c1", "content": "{'also': 'untouched'"},
            {"role": "assistant", "content": None, "tool_calls": [call("c", "", "c3")]},
        ],
    }
    before = copy.deepcopy(body)
    assert repair_request(body) == ["a", "c"]
    msgs = body["messages"]
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    assert msgs[1]["tool_calls"][1]["function"]["arguments"] == '{"ok": 1}'
    assert msgs[3]["tool_calls"][0]["function"]["arguments"] == "{}"
    # text is never touched, and neither is anything but arguments
    for i in (0, 2):
        assert msgs[i] == before["messages"][i]
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["id"] == "c1"


def test_request_with_object_arguments_gets_a_string() -> None:
    body = {"messages": [{"role": "assistant", "tool_calls": [call("a", {"x": "é"})]}]}
    assert repair_request(body) == ["a"]
    assert body["messages"][0]["tool_calls"][0]["function"]["arguments"] == '{"x": "é"}'


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": "x"}, {"messages": [None, 1, {"role": "assistant", "tool_calls": "x"}]}, {"prompt": "p"}],
)
def test_request_shapes_without_history_are_left_alone(body: dict) -> None:
    before = copy.deepcopy(body)
    assert repair_request(body) == []
    assert body == before


def test_valid_request_is_unchanged() -> None:
    body = {"messages": [{"role": "assistant", "content": None, "tool_calls": [call("a", '{"x":1}')]}]}
    before = copy.deepcopy(body)
    assert repair_request(body) == []
    assert body == before


# --- non-streaming completions -----------------------------------------------------------


def completion(*messages: dict, finish: str = "stop") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": i, "message": m, "finish_reason": finish} for i, m in enumerate(messages)],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_completion_arguments_repaired_in_every_choice() -> None:
    body = completion(
        {"role": "assistant", "content": "", "tool_calls": [call("a", "{'x': 1,}")]},
        {"role": "assistant", "content": "  \n", "tool_calls": [call("b", '{"ok":true}'), call("c", "", "c2")]},
        finish="tool_calls",
    )
    assert repair_completion(body, tools_offered=True) == ["a", "c"]
    m0, m1 = (c["message"] for c in body["choices"])
    assert m0["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    assert m1["tool_calls"][0]["function"]["arguments"] == '{"ok":true}'
    assert m1["tool_calls"][1]["function"]["arguments"] == "{}"
    assert m0["content"] is None and m1["content"] is None
    assert body["usage"]["total_tokens"] == 3


def test_content_with_text_is_kept_next_to_tool_calls() -> None:
    body = completion({"role": "assistant", "content": " Let me look. ", "tool_calls": [call("a", "{}")]})
    repair_completion(body, tools_offered=True)
    assert body["choices"][0]["message"]["content"] == " Let me look. "


def test_blank_content_without_tool_calls_is_kept() -> None:
    body = completion({"role": "assistant", "content": ""}, {"role": "assistant", "content": "\n"})
    before = copy.deepcopy(body)
    assert repair_completion(body, tools_offered=True) == []
    assert body == before


def test_legacy_function_call_is_repaired() -> None:
    body = completion({"role": "assistant", "content": None, "function_call": {"name": "a", "arguments": "{x: 1"}})
    assert repair_completion(body, tools_offered=True) == ["a"]
    assert body["choices"][0]["message"]["function_call"]["arguments"] == '{"x": 1}'


TEXT_CALLS = [
    # (case, content, expected calls [(name, args obj)], expected content)
    (
        "hermes json",
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>',
        [("read_file", {"path": "a.py"})],
        None,
    ),
    (
        "text before",
        'Let me check.\n<tool_call>{"name": "ls", "arguments": {}}</tool_call>',
        [("ls", {})],
        "Let me check.\n",
    ),
    (
        "two calls",
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"y": "ü"}}</tool_call>',
        [("a", {"x": 1}), ("b", {"y": "ü"})],
        None,
    ),
    (
        "broken json inside",
        "<tool_call>{'name': 'a', 'arguments': {'x': 1,}}</tool_call>",
        [("a", {"x": 1})],
        None,
    ),
    (
        "arguments as a string",
        '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1,}"}</tool_call>',
        [("a", {"x": 1})],
        None,
    ),
    ("unclosed at the end", '<tool_call>{"name": "a", "arguments": {"x": "tru', [("a", {"x": "tru"})], None),
    (
        "qwen3-coder xml",
        "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.py\n</parameter>\n"
        "<parameter=content>\nprint('hi')\n\n</parameter>\n<parameter=mode>\n420\n</parameter>\n</function>\n</tool_call>",
        [("write_file", {"path": "src/a.py", "content": "print('hi')\n", "mode": 420})],
        None,
    ),
    ("no arguments", '<tool_call>{"name": "now"}</tool_call>', [("now", {})], None),
]


@pytest.mark.parametrize("case,content,calls,text", TEXT_CALLS, ids=[t[0] for t in TEXT_CALLS])
def test_tool_calls_written_as_text_become_structured(case: str, content: str, calls: list, text: str | None) -> None:
    body = completion({"role": "assistant", "content": content})
    names = repair_completion(body, tools_offered=True)
    choice = body["choices"][0]
    msg = choice["message"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in msg["tool_calls"])
    assert len({c["id"] for c in msg["tool_calls"]}) == len(calls)
    assert msg["content"] == text
    assert choice["finish_reason"] == "tool_calls"
    assert names == [n for n, _ in calls]


NOT_CALLS = [
    "I will use <tool_call> tags when needed.",
    "<tool_call>not json at all</tool_call> and more",
    '<tool_call>{"no_name": 1}</tool_call>',
    "a < b and <tool_ca",
]


@pytest.mark.parametrize("content", NOT_CALLS)
def test_text_that_is_not_a_call_is_left_as_written(content: str) -> None:
    body = completion({"role": "assistant", "content": content})
    before = copy.deepcopy(body)
    assert repair_completion(body, tools_offered=True) == []
    assert body == before


def test_text_calls_are_left_alone_when_no_tools_were_offered() -> None:
    body = completion({"role": "assistant", "content": '<tool_call>{"name": "a", "arguments": {}}</tool_call>'})
    before = copy.deepcopy(body)
    assert repair_completion(body, tools_offered=False) == []
    assert body == before


def test_text_calls_join_structured_ones() -> None:
    body = completion(
        {"role": "assistant", "content": '<tool_call>{"name": "b", "arguments": {}}</tool_call>', "tool_calls": [call("a", "{}")]}
    )
    assert repair_completion(body, tools_offered=True) == ["b"]
    msg = body["choices"][0]["message"]
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["a", "b"]
    assert msg["content"] is None


@pytest.mark.parametrize("body", [{}, {"choices": None}, {"choices": [None, {"message": None}, {"text": "x"}]}, {"error": {}}])
def test_completion_shapes_without_messages_are_left_alone(body: dict) -> None:
    before = copy.deepcopy(body)
    assert repair_completion(body, tools_offered=True) == []
    assert body == before


def test_parse_text_call_rejects_blank_and_nameless() -> None:
    assert parse_text_call("  ") is None
    assert parse_text_call('{"name": ""}') is None
    assert parse_text_call("<function=>x</function>") is None
    assert parse_text_call('[{"name": "a", "arguments": {"x": 1}}]')[:2] == ("a", '{"x": 1}')
