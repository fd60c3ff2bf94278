"""Tool calls clients can trust (issue 3), end to end: a scripted backend run as a unit behind the
switch replays broken tool calls; the official `openai` clients (Python, and the npm package under
Node) must get JSON-object arguments and the backend's text unchanged, streaming and not.
Request history is checked against a real llama-server, which answers 500 on malformed arguments.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import openai

from support.harness import free_port
from support.node import NODE_DIR, npm_ready


def _tool(name: str, **props: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "strict": True,  # strict: both SDKs then JSON-parse the arguments themselves
        "parameters": {"type": "object", "properties": {k: {"type": v} for k, v in props.items()},
                       "additionalProperties": True}}}


TOOLS = [
    _tool("read_file", path="string"), _tool("search", query="string"),
    _tool("write_file", path="string", content="string"), _tool("list_files"),
    _tool("run", command="string"), _tool("translate", text="string", to="string"),
]


@dataclass
class Case:
    name: str
    calls: list[tuple[str, str]] = field(default_factory=list)  # (tool, raw arguments) as sent
    want: list[tuple[str, dict]] = field(default_factory=list)  # (tool, arguments) clients get
    content: str | None = None  # the backend's text
    want_content: str | None = None  # the text clients get (None: no text)
    tools: bool = True  # the request offers tools
    interleave: bool = False  # stream the calls' fragments interleaved
    exact: bool = False  # arguments must arrive byte-identical
    want_finish: str = "tool_calls"
    crlf: bool = False  # the backend frames events with CRLF

    @property
    def finish(self) -> str:
        return "tool_calls" if self.calls else "stop"


CASES = [
    Case("trailing comma", [("read_file", '{"path": "src/main.py", "line": 3,}')],
         [("read_file", {"path": "src/main.py", "line": 3})]),
    Case("single quotes", [("read_file", "{'path': 'src/main.py'}")], [("read_file", {"path": "src/main.py"})],
         crlf=True),
    Case("unquoted keys", [("search", '{query: "def main", max_results: 5}')],
         [("search", {"query": "def main", "max_results": 5})]),
    Case("missing closing braces", [("write_file", '{"path": "a.txt", "options": {"mode": "w"')],
         [("write_file", {"path": "a.txt", "options": {"mode": "w"}})]),
    Case("truncated string", [("write_file", '{"path": "notes.md", "content": "Line one\\nLine tw')],
         [("write_file", {"path": "notes.md", "content": "Line one\nLine tw"})]),
    Case("empty arguments", [("list_files", "")], [("list_files", {})]),
    Case("garbage", [("run", "I cannot do that <|im_end|>")], [("run", {})]),
    Case("two concatenated objects", [("read_file", '{"path": "a.py"}{"path": "b.py"}')],
         [("read_file", {"path": "a.py"})]),
    Case("non-ascii", [("translate", "{'text': 'Grüße aus Zürich 🙂', 'to': '日本語',}")],
         [("translate", {"text": "Grüße aus Zürich 🙂", "to": "日本語"})],
         content="Voilà — ich prüfe das: 東京 🙂 <b>x</b> a < b\n",
         want_content="Voilà — ich prüfe das: 東京 🙂 <b>x</b> a < b\n"),
    Case("parallel calls, interleaved",
         [("read_file", '{"path": "a.py",}'), ("read_file", "{'path': 'b.py'}"), ("search", '{"query": "x"}')],
         [("read_file", {"path": "a.py"}), ("read_file", {"path": "b.py"}), ("search", {"query": "x"})],
         interleave=True),
    Case("valid arguments", [("read_file", '{"path":"ü.py",  "line" : 1}')], [("read_file", {"path": "ü.py", "line": 1})],
         content="Checking.", want_content="Checking.", exact=True),
    Case("calls written as text",
         content='<tool_call>\n{"name": "read_file", "arguments": {"path": "src/app.py"}}\n</tool_call>\n'
                 '<tool_call>\n{"name": "search", "arguments": {"query": "tool_call",}}\n</tool_call>',
         want=[("read_file", {"path": "src/app.py"}), ("search", {"query": "tool_call"})]),
    Case("qwen3-coder call written as text",
         content="I'll write it.\n<tool_call>\n<function=write_file>\n<parameter=path>\nhello.py\n</parameter>\n"
                 '<parameter=content>\nprint("hi")\n</parameter>\n</function>\n</tool_call>',
         want=[("write_file", {"path": "hello.py", "content": 'print("hi")'})], want_content="I'll write it.\n"),
    Case("text only", content="Plain answer: 1 < 2, and the <tool_call> tag is how Hermes writes calls.",
         want_content="Plain answer: 1 < 2, and the <tool_call> tag is how Hermes writes calls.",
         want_finish="stop"),
    Case("text call without tools offered", tools=False,
         content='<tool_call>{"name": "run", "arguments": {}}</tool_call>',
         want_content='<tool_call>{"name": "run", "arguments": {}}</tool_call>', want_finish="stop"),
]


# --- what the backend sends ---------------------------------------------------------------


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def completion_body(case: Case, model: str) -> str:
    """A non-streaming answer, shaped like llama-server's."""
    msg: dict[str, Any] = {"role": "assistant", "content": case.content or ""}
    if case.calls:
        msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}, "id": f"id-{i}"}
                             for i, (n, a) in enumerate(case.calls)]
    return _json({"choices": [{"finish_reason": case.finish, "index": 0, "message": msg}], "created": 1,
                  "model": model, "system_fingerprint": "b1-test", "object": "chat.completion",
                  "usage": {"completion_tokens": 9, "prompt_tokens": 5, "total_tokens": 14}, "id": "chatcmpl-t"})


def _pieces(s: str, sizes: tuple[int, ...]) -> list[str]:
    out, i, k = [], 0, 0
    while i < len(s):
        out.append(s[i:i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


def stream_raw(case: Case, model: str) -> list[str]:
    """A streamed answer as llama-server sends it, cut into writes at awkward places."""
    def chunk(delta: dict | None, finish: str | None = None, **top: Any) -> dict:
        c = {"choices": [] if delta is None else [{"finish_reason": finish, "index": 0, "delta": delta}],
             "created": 1, "id": "chatcmpl-t", "model": model, "system_fingerprint": "b1-test",
             "object": "chat.completion.chunk"}
        c.update(top)
        return c

    chunks = [chunk({"role": "assistant", "content": None})]
    chunks += [chunk({"content": p}) for p in _pieces(case.content or "", (3, 7, 1, 5))]
    seqs = []
    for i, (name, args) in enumerate(case.calls):
        frags = _pieces(args, (4, 1, 6)) or [""]
        seqs.append([{"index": i, "id": f"id-{i}", "type": "function", "function": {"name": name, "arguments": ""}}]
                    + [{"index": i, "function": {"arguments": f}} for f in frags])
    if case.interleave:  # every header first, then the fragments round-robin
        order = [s[0] for s in seqs]
        rest = [s[1:] for s in seqs]
        while any(rest):
            for r in rest:
                if r:
                    order.append(r.pop(0))
    else:
        order = [e for s in seqs for e in s]
    chunks += [chunk({"tool_calls": [e]}) for e in order]
    chunks.append(chunk({}, case.finish))
    chunks.append(chunk(None, usage={"completion_tokens": 9, "prompt_tokens": 5, "total_tokens": 14}))
    eol = "\r\n" if case.crlf else "\n"
    text = "".join(f"data: {_json(c)}{eol}{eol}" for c in chunks)
    text = f": keep-alive{eol}{eol}" + text
    return _pieces(text, (50, 3, 170, 1, 97))


def sse_step(case: Case, model: str) -> dict:
    return {"sse": [{"raw": p} for p in stream_raw(case, model)]}


def json_step(case: Case, model: str) -> dict:
    return {"body": completion_body(case, model), "content_type": "application/json"}


# --- what clients must see ---------------------------------------------------------------


def check(case: Case, got: dict, where: str) -> None:
    """got: {content, tool_calls: [{id, type, name, arguments}], finish_reason}."""
    label = f"{case.name} / {where}"
    calls = got["tool_calls"] or []
    assert [c["name"] for c in calls] == [n for n, _ in case.want], label
    for c, (_, want) in zip(calls, case.want):
        parsed = json.loads(c["arguments"])
        assert isinstance(parsed, dict), label
        assert parsed == want, label
        assert c["type"] == "function", label
    if case.exact:
        assert [c["arguments"] for c in calls] == [a for _, a in case.calls], label
    if case.calls:  # structured calls keep the backend's ids
        assert [c["id"] for c in calls] == [f"id-{i}" for i in range(len(case.calls))], label
    else:  # lifted out of text: fresh, distinct ids
        assert all(c["id"] for c in calls) and len({c["id"] for c in calls}) == len(calls), label
    if "translate" in [n for n, _ in case.want]:
        assert "Zürich" in calls[0]["arguments"], label  # non-ASCII as is, not \u-escaped
    content = got["content"]
    if case.want_content is None:
        assert content is None or ("non-stream" not in where and content == ""), (label, content)
    else:
        assert content == case.want_content, label
    assert got["finish_reason"] == case.want_finish, label


def _py_message(msg: Any, finish: str | None) -> dict:
    return {"content": msg.content, "finish_reason": finish,
            "tool_calls": [{"id": t.id, "type": t.type, "name": t.function.name,
                            "arguments": t.function.arguments} for t in msg.tool_calls or []]}


def python_client_sees(client: openai.OpenAI, case: Case, model: str) -> dict[str, dict]:
    kw: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "go"}]}
    if case.tools:
        kw["tools"] = TOOLS
    seen = {}

    reply = client.chat.completions.create(**kw)
    seen["non-stream"] = _py_message(reply.choices[0].message, reply.choices[0].finish_reason)

    content, finish, calls = None, None, {}
    for ch in client.chat.completions.create(stream=True, **kw):
        for choice in ch.choices:
            d = choice.delta
            if d.content is not None:
                content = (content or "") + d.content
            for t in d.tool_calls or []:
                acc = calls.setdefault(t.index, {"id": "", "type": "", "name": "", "arguments": ""})
                acc["id"] += t.id or ""
                acc["type"] = t.type or acc["type"]
                acc["name"] += (t.function and t.function.name) or ""
                acc["arguments"] += (t.function and t.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert sorted(calls) == list(range(len(calls))), case.name
    seen["stream, chunk by chunk"] = {"content": content, "finish_reason": finish,
                                      "tool_calls": [calls[i] for i in sorted(calls)]}

    done = []
    with client.chat.completions.stream(**kw) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.name, event.arguments, event.parsed_arguments))
        final = stream.get_final_completion()
    seen["stream, SDK accumulator"] = _py_message(final.choices[0].message, final.choices[0].finish_reason)
    # the SDK declares each call done when the next begins: by then its arguments were whole
    want_done = [(t["name"], t["arguments"]) for t in seen["stream, SDK accumulator"]["tool_calls"]]
    assert [(n, a) for n, a, _ in done] == want_done, case.name
    if case.tools:
        assert [p for _, _, p in done] == [json.loads(a) for _, a in want_done], case.name
    return seen


def test_python_client_gets_valid_tool_calls_and_unchanged_text(deploy):
    steps = [step(c, "tools") for c in CASES for step in (json_step, sse_step, sse_step)]
    s = deploy.scripted_unit("tools", {"routes": {"/v1/chat/completions": steps}})
    daemon = deploy.up({"tools": {"unit": s.unit, "url": s.url}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=180, max_retries=0)
    for case in CASES:
        for where, got in python_client_sees(client, case, "tools").items():
            check(case, got, where)
    assert len(s.records("request")) == 3 * len(CASES)  # every answer came from the backend
    log = daemon.log()
    assert "repaired the arguments of" in log and "read_file" in log
    assert "Zürich" not in log and "def main" not in log  # names are logged, never arguments


def test_node_openai_package_gets_valid_tool_calls_and_unchanged_text(deploy, tmp_path):
    npm_ready()
    packages = ["openai", "openai-v5"]  # 6.x, and 5.x as Roo Code pins it
    steps = [step(c, "tools") for _ in packages for c in CASES for step in (json_step, sse_step, sse_step)]
    s = deploy.scripted_unit("tools", {"routes": {"/v1/chat/completions": steps}})
    daemon = deploy.up({"tools": {"unit": s.unit, "url": s.url}})
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps([{"name": c.name, "model": "tools", "tools": TOOLS if c.tools else None}
                                      for c in CASES]))
    for pkg in packages:
        res = subprocess.run(["node", "tool_calls.mjs", pkg, daemon.url + "/v1", str(cases_path)],
                             cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"node ({pkg}) failed:\n{res.stderr}\n{res.stdout[-2000:]}"
        results = json.loads(res.stdout)
        assert [r["name"] for r in results] == [c.name for c in CASES]
        for case, r in zip(CASES, results):
            check(case, r["nonstream"], f"{pkg} non-stream")
            check(case, r["stream"], f"{pkg} stream, chunk by chunk")
            assert r["stream"]["indices"] == sorted(r["stream"]["indices"]), case.name  # calls in order
            check(case, r["accumulated"], f"{pkg} stream, SDK accumulator")
            done = [(d["name"], d["arguments"]) for d in r["accumulated"]["done_events"]]
            assert done == [(t["name"], t["arguments"]) for t in r["accumulated"]["tool_calls"]], case.name


# --- request history -------------------------------------------------------------------------

# A chat template that needs tool-call arguments as objects, as Qwen's do: llama-server then
# parses the history's arguments and answers 500 on malformed ones (llama.cpp #25510).
OBJECT_ARGS_TEMPLATE = (
    "{%- for message in messages %}<|{{ message.role }}|>{{ message.content or '' }}"
    "{%- if message.tool_calls %}{%- for tc in message.tool_calls %}<call>{{ tc.function.name }}"
    "{%- for k, v in tc.function.arguments|items %}<p={{ k }}>{{ v }}{%- endfor %}</call>{%- endfor %}"
    "{%- endif %}</s>{%- endfor %}{%- if add_generation_prompt %}<|assistant|>{%- endif %}"
)

SECRET = "hunter2-secret-marker"


def broken_history(ascii_only: bool = False) -> list[dict]:
    """The tiny test models can't tokenize non-ASCII text (their vocabulary has bytes < 0x80 only)."""
    def call(i: int, name: str, args: str) -> dict:
        return {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": args}}

    return [
        {"role": "system", "content": "You are terse. {'not': 'json',}"},
        {"role": "user", "content": "Read a.py and b.py, then search."},
        {"role": "assistant", "content": "", "tool_calls": [
            call(1, "read_file", '{"path": "a.py",}'),
            call(2, "read_file", f"{{'path': 'b.py', 'token': '{SECRET}'}}"),
            call(3, "search", '{"query": "ok"}'),
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "print('a')"},
        {"role": "tool", "tool_call_id": "c2", "content": "{broken: 'tool output stays'"},
        {"role": "tool", "tool_call_id": "c3", "content": "no hits"},
        {"role": "assistant", "content": None, "tool_calls": [call(4, "list_files", "")]},
        {"role": "tool", "tool_call_id": "c4", "content": "a.py b.py"},
        {"role": "user", "content": "Thanks, bye." if ascii_only else "Thanks — grüß dich."},
    ]


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_malformed_history_never_reaches_a_real_llama_server(deploy, tiny_models):
    template = deploy.dir / "object-args.jinja"
    template.write_text(OBJECT_ARGS_TEMPLATE)
    args = ["--jinja", "--chat-template-file", str(template)]
    port = free_port()  # both models are the same server on one port, as in the seed's setup
    fixed = deploy.llama_unit("fixed", tiny_models["a"], port=port, extra_args=args)
    raw = deploy.llama_unit("raw", tiny_models["a"], port=port, extra_args=args)
    daemon = deploy.up({"fixed": {"unit": fixed.unit, "url": fixed.url},
                        "raw": {"unit": raw.unit, "url": raw.url, "repair_tool_calls": False}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=180, max_retries=0)

    # without repair, llama-server itself refuses the conversation (and its 500 passes through)
    try:
        client.chat.completions.create(model="raw", messages=broken_history(True), max_tokens=4)
    except openai.InternalServerError as e:
        assert "Failed to parse tool call arguments as JSON" in str(e)
    else:
        raise AssertionError("llama-server accepted malformed tool-call arguments: the test proves nothing")

    # with repair, the same conversation goes on, streaming and not
    reply = client.chat.completions.create(model="fixed", messages=broken_history(True), max_tokens=4)
    assert reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="fixed", messages=broken_history(True), max_tokens=4,
                                                 stream=True))
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)

    log = daemon.log()
    assert "repaired the arguments of 3 tool call(s) in the request history: read_file, read_file, list_files" \
        in log, log[-3000:]
    assert SECRET not in log


def test_repaired_history_is_what_the_backend_receives(deploy):
    answer = {"json": {"choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "ok"}}], "object": "chat.completion"}}
    s = deploy.scripted_unit("hist", {"routes": {"/v1/chat/completions": answer}})
    daemon = deploy.up({"hist": {"unit": s.unit, "url": s.url}})
    sent = {"model": "hist", "messages": broken_history(), "tools": TOOLS, "temperature": 0.1}
    status, _ = _post(daemon.url + "/v1/chat/completions", sent)
    assert status == 200
    [rec] = s.records("request")
    got = rec["body"]
    sent_calls = [t for m in sent["messages"] for t in m.get("tool_calls") or []]
    got_calls = [t for m in got["messages"] for t in m.get("tool_calls") or []]
    assert [json.loads(t["function"]["arguments"]) for t in got_calls] == [
        {"path": "a.py"}, {"path": "b.py", "token": SECRET}, {"query": "ok"}, {}]
    assert got_calls[2]["function"]["arguments"] == sent_calls[2]["function"]["arguments"]  # valid: as sent
    # nothing but the arguments changed: text, tool output, ids, tools, options
    for t in sent_calls:
        t["function"]["arguments"] = None
    for t in got_calls:
        t["function"]["arguments"] = None
    assert got == sent


def test_repair_off_is_byte_transparent(deploy):
    case = next(c for c in CASES if c.name == "parallel calls, interleaved")
    plain = Case("plain text", content="Hello — wörld, nothing to repair here.")
    angled = Case("text with a tag", content="Hello — wörld <tool_call> 1 < 2")
    a = deploy.scripted_unit("off", {"routes": {"/v1/chat/completions": [
        json_step(case, "m"), sse_step(case, "m")]}})
    b = deploy.scripted_unit("on", {"routes": {"/v1/chat/completions": [
        sse_step(plain, "m2"), sse_step(angled, "m2")]}})
    daemon = deploy.up({"off": {"unit": a.unit, "url": a.url, "repair_tool_calls": False},
                        "on": {"unit": b.unit, "url": b.url}}, loading_progress="off")  # the relayed bytes alone
    url = daemon.url + "/v1/chat/completions"
    history = {"messages": broken_history(), "tools": TOOLS}

    status, body = _post(url, {"model": "off", **history})
    assert status == 200 and body == completion_body(case, "m").encode()
    status, body = _post(url, {"model": "off", "stream": True, **history})
    assert status == 200 and body == ("".join(stream_raw(case, "m")) + "data: [DONE]\n\n").encode()
    assert [r["body"]["messages"] for r in a.records("request")] == [broken_history()] * 2

    # with repair on, streams with nothing to repair pass byte for byte too
    hi = [{"role": "user", "content": "hi"}]
    status, body = _post(url, {"model": "on", "stream": True, "tools": TOOLS, "messages": hi})
    assert status == 200 and body == ("".join(stream_raw(plain, "m2")) + "data: [DONE]\n\n").encode()
    status, body = _post(url, {"model": "on", "stream": True, "messages": hi})  # no tools offered
    assert status == 200 and body == ("".join(stream_raw(angled, "m2")) + "data: [DONE]\n\n").encode()
