"""Nothing a client sends crashes a request: hostile bodies, headers and HTTP framing against a
running switch. The backend echoes what it got with a 200, so any 5xx is the switch's own."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.factories import module_deployment
from support.harness import chat_body, post_json

DEEP = 10_000


@module_deployment("hostile")
def echo(d):
    backend = d.scripted_unit("echo", {"routes": {"*": {"echo": True}}})
    daemon = d.up({"echo": {"unit": backend.unit, "url": backend.url}}, max_body_bytes=1 << 20)
    return daemon, backend


def assert_switch_error(status: int, body, want_status: int) -> dict:
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"], body
    return body["error"]


async def test_deeply_nested_body_is_400(echo):
    daemon, _ = echo
    async with aiohttp.ClientSession() as http:
        for body in ("[" * DEEP + "]" * DEEP, '{"model": "echo", "x": ' + "[" * DEEP + "]" * DEEP + "}"):
            status, got, _ = await post_json(http, daemon.url + "/v1/chat/completions", body)
            error = assert_switch_error(status, got, 400)
            assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]
    assert "internal error" not in daemon.log()


async def test_deeply_nested_tool_call_arguments_become_an_empty_object(echo):
    """History arguments nested 10,000 deep: repaired to {} with a warning, as docs/tool-calls.md promises."""
    daemon, backend = echo
    deep = "[" * DEEP + "]" * DEEP
    history = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "deep_tool", "arguments": deep}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    async with aiohttp.ClientSession() as http:
        status, got, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                         {"model": "echo", "messages": history})
    assert status == 200, got
    sent = got["body"]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert sent == "{}"
    assert re.search(r"tool deep_tool: arguments not repairable .*replaced with \{\}", daemon.log())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
RAW = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"NaN", b'{"model": NaN}', b'{"model": "echo", "n": 1e999999}', b'{"model": "\\ud800"}',
                     b'{"model": 1' + b"0" * 5000 + b"}", b"\xff\xfe{", b'{"model": "echo", "messages": "x"}',
                     ("{" * 3000).encode()]),
)
BODIES = st.one_of(
    RAW,
    JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda extra, model: json.dumps({**extra, "model": model}).encode(),
              st.dictionaries(st.sampled_from(["messages", "tools", "stream", "max_tokens", "input"]), JSON),
              st.sampled_from(["echo", "nope", ""])),
)
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "X-Thing", "Accept-Encoding", "Content-Encoding", "Authorization"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=3)
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/x/y", "/v1/"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES, headers=HEADERS, path=PATHS)
def test_fuzzed_bodies_and_headers_never_get_a_5xx_of_the_switchs_own(echo, body, headers, path):
    daemon, _ = echo

    async def send() -> tuple[int, bytes, str]:
        async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as http:
            async with http.post(daemon.url + path, data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=60)) as r:
                return r.status, await r.read(), r.content_type

    status, raw, content_type = asyncio.run(send())
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert content_type == "application/json", raw[:300]
        assert set(json.loads(raw)) == {"error"}


async def test_still_serving_after_the_fuzz(echo):
    daemon, _ = echo
    async with aiohttp.ClientSession() as http:
        status, got, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("echo"))
    assert status == 200 and got["path"] == "/v1/chat/completions"
    assert "Traceback" not in daemon.log() and "internal error" not in daemon.log()


MALFORMED = [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\nBad Header\r\n\r\n",
]


def raw_exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_malformed_http_framing_is_400_and_one_quiet_log_line(echo):
    """aiohttp answers 400; the switch must not log a traceback at error level for each one."""
    daemon, _ = echo
    before = len(daemon.log())
    for _ in range(5):
        for data in MALFORMED:
            reply = raw_exchange(daemon.url, data)
            assert re.match(rb"HTTP/1\.[01] 400 ", reply), reply[:200]
    log = daemon.log()[before:]
    assert "Traceback" not in log and "ERROR" not in log and "Error handling request" not in log, log
    lines = [line for line in log.splitlines() if "malformed HTTP request" in line]
    assert 1 <= len(lines) <= 2, log  # rate-limited: one line per 10 s
