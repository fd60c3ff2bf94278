"""No web page can drive the switch (issue 18): the Host check against DNS rebinding, the refusal
of cross-site requests, CORS for listed origins only. The rules are pure functions, tested by
table; the end-to-end tests use a real headless Chromium on a page of another origin
(http://localhost:P is not http://127.0.0.1:Q), real systemd units and real HTTP."""

from __future__ import annotations

import http.client
import json

import pytest
from aiohttp import web

from support import harness
from support.cdp import Browser
from llm_switch.config import parse
from llm_switch.http.guard import _HostVerdicts, cross_origin, host_allowed

ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "from a"}, "finish_reason": "stop"}]}
# a backend that answers like llama-server: its own CORS headers, which must never reach a page
BACKEND_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
KEY = "guard-test-key-0123456789abcdef"


def config(**top) -> object:
    text = json.dumps({"models": {"a": "a.service"}, **top})
    return parse(text)


LOOPBACK = config()
LISTED = config(allowed_hosts=["llm.home.arpa"], cors_origins=["http://localhost:8080", "chrome-extension://abc"])
LAN_KEYED = config(listen="0.0.0.0:3002", api_keys=[KEY])
LAN_OPEN = config(listen="0.0.0.0:3002", allow_unauthenticated=True)


@pytest.mark.parametrize("host, cfg, allowed", [
    ("127.0.0.1:3002", LOOPBACK, True),
    ("127.0.0.1", LOOPBACK, True),
    ("localhost:3002", LOOPBACK, True),
    ("LOCALHOST", LOOPBACK, True),
    ("[::1]:3002", LOOPBACK, True),
    ("[::1]", LOOPBACK, True),
    (None, LOOPBACK, True),  # no Host: no browser's request
    ("attacker.example:3002", LOOPBACK, False),
    ("attacker.example", LOOPBACK, False),
    ("127.0.0.2:3002", LOOPBACK, True),  # an address is no name a page can rebind
    ("127.0.0.1.attacker.example", LOOPBACK, False),
    ("localhost.attacker.example:3002", LOOPBACK, False),
    ("", LOOPBACK, False),
    ("llm.home.arpa:3002", LISTED, True),
    ("llm.home.arpa", LOOPBACK, False),
    ("anything.example:3002", LAN_KEYED, True),  # off loopback with keys: the key guards it
    ("0.0.0.0:3002", LAN_OPEN, True),  # the listen address
    ("192.168.1.5:3002", LAN_OPEN, False),  # without keys only the listed names
])
def test_host_check(host, cfg, allowed):
    assert host_allowed(host, cfg) is allowed


@pytest.mark.unit
def test_remembered_verdicts_follow_the_config_in_force():
    verdicts = _HostVerdicts()
    assert verdicts.allowed("llm.home.arpa", LOOPBACK) is False
    assert verdicts.allowed("llm.home.arpa", LISTED) is True  # a reload's config: verdicts made again
    assert verdicts.allowed("llm.home.arpa", LOOPBACK) is False
    for i in range(3 * _HostVerdicts.LIMIT):  # made-up names: the memory stays bounded
        assert verdicts.allowed(f"n{i}.example", LOOPBACK) is False
        assert len(verdicts.known) <= _HostVerdicts.LIMIT


SAME = {"Host": "127.0.0.1:3002"}


@pytest.mark.parametrize("method, path, headers, cfg, refused", [
    ("POST", "/v1/chat/completions", {}, LOOPBACK, False),  # curl, SDKs: no Origin
    ("POST", "/unload", {**SAME, "Origin": "http://127.0.0.1:3002"}, LOOPBACK, False),  # the page's own
    ("POST", "/unload", {**SAME, "Origin": "http://localhost:8080"}, LOOPBACK, True),
    ("POST", "/unload", {**SAME, "Origin": "null"}, LOOPBACK, True),
    ("POST", "/v1/chat/completions", {**SAME, "Origin": "http://localhost:8080"}, LISTED, False),
    ("POST", "/v1/chat/completions", {**SAME, "Origin": "http://LOCALHOST:8080"}, LISTED, False),
    ("POST", "/v1/chat/completions", {**SAME, "Origin": "http://localhost:8081"}, LISTED, True),
    ("POST", "/api/chat", {**SAME, "Origin": "chrome-extension://abc"}, LISTED, False),  # an extension
    ("POST", "/api/chat", {**SAME, "Origin": "chrome-extension://abd"}, LISTED, True),
    ("GET", "/status", {**SAME, "Sec-Fetch-Site": "cross-site"}, LOOPBACK, True),  # <img src>, no Origin
    ("GET", "/status", {**SAME, "Sec-Fetch-Site": "same-site"}, LOOPBACK, True),  # another port of localhost
    ("GET", "/status", {**SAME, "Sec-Fetch-Site": "same-origin"}, LOOPBACK, False),
    ("GET", "/status", {**SAME, "Sec-Fetch-Site": "none"}, LOOPBACK, False),  # typed in the address bar
    ("GET", "/health", {**SAME, "Origin": "http://localhost:8080"}, LOOPBACK, False),
    ("HEAD", "/health", {**SAME, "Sec-Fetch-Site": "cross-site"}, LOOPBACK, False),
    ("POST", "/health", {**SAME, "Origin": "http://localhost:8080"}, LOOPBACK, True),
    ("GET", "/ui", {**SAME, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"}, LOOPBACK, False),
    ("GET", "/ui", {**SAME, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "iframe"}, LOOPBACK, True),
    ("GET", "/ui/events", {**SAME, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"}, LOOPBACK, True),
])
def test_cross_origin(method, path, headers, cfg, refused):
    assert (cross_origin(method, path, headers, cfg) is not None) is refused


def raw_request(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def state(deploy, backend) -> str:
    return deploy.um.show(backend.unit, "ActiveState")["ActiveState"]


def test_rebinding_host_is_refused_and_nothing_happens(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"json": ANSWER}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    port = daemon.url.rsplit(":", 1)[1]
    body = json.dumps(harness.chat_body("a")).encode()
    for method, path, data in (("POST", "/v1/chat/completions", body), ("POST", "/load/a", b""),
                               ("GET", "/status", b""), ("GET", "/upstream/a/props", b"")):
        status, _, raw = raw_request(daemon.url, method, path, {"Host": f"attacker.example:{port}",
                                                                "Content-Type": "application/json"}, data)
        assert status == 403, (path, status, raw)
        assert json.loads(raw)["error"]["code"] == "host_not_allowed", raw
    assert state(deploy, a) == "inactive"
    assert a.records("request") == []
    # the same request by a loopback name is served
    status, _, raw = raw_request(daemon.url, "POST", "/v1/chat/completions",
                                 {"Host": f"localhost:{port}", "Content-Type": "application/json"}, body)
    assert status == 200, raw


def test_backend_cors_headers_never_reach_the_client(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"json": ANSWER, "headers": BACKEND_CORS}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}}, cors_origins=["http://localhost:8080"])
    body = json.dumps(harness.chat_body("a")).encode()
    status, headers, _ = raw_request(daemon.url, "POST", "/v1/chat/completions",
                                     {"Content-Type": "application/json"}, body)
    assert status == 200 and not [h for h in headers if h.startswith("access-control-")], headers
    status, headers, _ = raw_request(daemon.url, "POST", "/v1/chat/completions",
                                     {"Content-Type": "application/json", "Origin": "http://localhost:8080"}, body)
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:8080", headers
    assert "access-control-allow-credentials" not in headers, headers
    sent = a.records("request")
    assert len(sent) == 2 and not [h for h in sent[1]["headers"] if h.lower() == "origin"], sent[1]["headers"]
    # a preflight for a listed origin is the switch's own; for another one a 403
    status, headers, _ = raw_request(daemon.url, "OPTIONS", "/v1/chat/completions", {
        "Origin": "http://localhost:8080", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204 and headers["access-control-allow-headers"] == "authorization, content-type", headers
    status, headers, _ = raw_request(daemon.url, "OPTIONS", "/v1/chat/completions", {
        "Origin": "http://localhost:9999", "Access-Control-Request-Method": "POST"})
    assert status == 403 and "access-control-allow-origin" not in headers, headers
    assert len(a.records("request")) == 2


class OtherOrigin:
    """A real page server on http://localhost:P: another origin than the switch's 127.0.0.1:Q."""

    async def __aenter__(self) -> str:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text="<!doctype html><title>other</title>", content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = harness.free_port()
        await web.TCPSite(self.runner, "localhost", port).start()
        return f"http://localhost:{port}"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


# each fetch a page may try; each returns what the page could read, or the error it got
ATTEMPTS = {
    "chat": """fetch(S + '/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'text/plain'},
               body: JSON.stringify({model: 'a', messages: [{role: 'user', content: 'hi'}]})})""",
    "unload": "fetch(S + '/unload', {method: 'POST'})",
    "load": "fetch(S + '/load/b', {method: 'POST'})",
    "no-cors": """fetch(S + '/v1/chat/completions', {method: 'POST', mode: 'no-cors',
                  body: JSON.stringify({model: 'a', messages: [{role: 'user', content: 'hi'}]})})""",
    "no-cors unload": "fetch(S + '/unload', {method: 'POST', mode: 'no-cors'})",
    "status": "fetch(S + '/status')",
}
READ = ".then(async r => 'status ' + r.status + ': ' + await r.text(), e => 'error: ' + e.name)"


async def test_page_of_another_origin_can_drive_nothing(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"json": ANSWER, "headers": BACKEND_CORS}}})
    b = deploy.scripted_unit("b", {})
    models = {"a": {"unit": a.unit, "url": a.url, "memory": "1G"}, "b": {"unit": b.unit, "url": b.url, "memory": "1G"}}
    daemon = deploy.up(models, memory_budget="4G")
    status, _, _ = raw_request(daemon.url, "POST", "/load/a", {})
    assert status == 200  # a runs; the page will try to unload it and to start b
    async with OtherOrigin() as origin, Browser() as browser:
        await browser.goto(origin + "/")
        await browser.wait_for("document.title === 'other'")
        for name, attempt in ATTEMPTS.items():
            seen = await browser.eval(f"(() => {{ const S = {json.dumps(daemon.url)}; return {attempt}{READ}; }})()")
            # a CORS fetch fails; a no-cors one gets an opaque answer (status 0, no body)
            assert seen in ("error: TypeError", "status 0: "), (name, seen)
    assert state(deploy, a) == "active" and state(deploy, b) == "inactive"
    assert a.records("request") == [], a.records("request")


async def test_page_of_a_listed_origin_chats(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"json": ANSWER, "headers": BACKEND_CORS}}})
    async with OtherOrigin() as origin, Browser() as browser:
        daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}}, api_keys=[KEY], cors_origins=[origin])
        await browser.goto(origin + "/")
        await browser.wait_for("document.title === 'other'")
        seen = await browser.eval(f"""(() => fetch({json.dumps(daemon.url)} + '/v1/chat/completions', {{
            method: 'POST', headers: {{'Content-Type': 'application/json', Authorization: 'Bearer {KEY}'}},
            body: JSON.stringify({{model: 'a', messages: [{{role: 'user', content: 'hi'}}]}})}})
            .then(r => r.json()).then(j => j.choices[0].message.content, e => 'error: ' + e))()""")
        assert seen == "from a"
        # its key still counts: without it, a readable 401
        seen = await browser.eval(f"""(() => fetch({json.dumps(daemon.url)} + '/unload', {{method: 'POST'}})
            .then(r => r.status, e => 'error: ' + e))()""")
        assert seen == 401
