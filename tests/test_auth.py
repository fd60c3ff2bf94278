"""API keys end to end: real clients (openai, anthropic) with a right key, a wrong one and none;
keys limited to some models; no client key ever reaches a backend; backend_api_key for a
llama-server run with --api-key; a listen off loopback without keys refused; no key in the journal."""

from __future__ import annotations

import json
import sys

import aiohttp
import anthropic
import openai
import pytest

from support import harness
from support.factories import module_deployment
from support.harness import chat_body, free_port, post_json

ADMIN = "admin-3f9c0a7be15d42c8a6"
ROO = "roo-key-0123456789abcdef"  # may use model a only
WRONG = ADMIN[:-1] + "7"  # one character off
BACKEND_KEY = "backend-key-for-llama-b-42"

MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "a",
           "content": [{"type": "text", "text": "hi from a"}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 3}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@module_deployment("auth")
def keyed(d):
    """A switch with two scripted models that echo the headers they get; b has a backend key."""
    echo = {"/v1/chat/completions": {"echo": True}, "/v1/embeddings": {"echo": True},
            "/v1/messages": {"json": MESSAGE}}
    a = d.scripted_unit("a", {"routes": echo})
    b = d.scripted_unit("b", {"routes": echo})
    key_file = d.dir / "api-key"
    key_file.write_text(f"# the admin key\n{ADMIN}\n")
    key_file.chmod(0o600)
    daemon = d.up({"a": {"unit": a.unit, "url": a.url, "aliases": ["alpha"]},
                   "b": {"unit": b.unit, "url": b.url, "backend_api_key": BACKEND_KEY}},
                  api_keys=[{"key_file": str(key_file), "name": "admin"},
                            {"key": ROO, "name": "roo", "models": ["alpha"]}])
    return daemon, (a, b)


def _openai(daemon, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0)


def _headers_seen(echoed: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in echoed["headers"].items()}


async def test_openai_client_with_the_right_key(keyed):
    daemon, _ = keyed
    client = _openai(daemon, ADMIN)
    raw = await client.chat.completions.with_raw_response.create(
        model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    seen = _headers_seen(raw.http_response.json())
    assert "authorization" not in seen and "x-api-key" not in seen, seen
    assert ADMIN not in json.dumps(seen)
    ids = [m.id async for m in client.models.list()]
    assert ids == ["a", "b"]


@pytest.mark.parametrize("key", [WRONG, "sk-" + "x" * 40])
async def test_openai_client_with_a_wrong_key_gets_401(keyed, key):
    daemon, (a, _) = keyed
    before = len(a.records("request"))
    client = _openai(daemon, key)
    with pytest.raises(openai.AuthenticationError) as e:
        await client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"
    assert e.value.response.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    assert len(a.records("request")) == before  # nothing reached the backend


async def test_no_key_gets_401_on_every_route_but_health(keyed, http):
    daemon, (a, b) = keyed
    before = len(a.records("request")) + len(b.records("request"))
    # the SDK wants some key: tell it to leave its Authorization header out
    client = _openai(daemon, "unused")
    with pytest.raises(openai.AuthenticationError) as e:
        await client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}],
                                             extra_headers={"Authorization": openai.omit})
    assert e.value.code == "invalid_api_key"
    for method, path in [("GET", "/status"), ("GET", "/running"), ("GET", "/v1/models"),
                         ("GET", "/v1/models/a"), ("POST", "/unload"), ("POST", "/unload/a"),
                         ("POST", "/load/a"), ("GET", "/metrics"), ("GET", "/ui/events"), ("GET", "/logs"),
                         ("GET", "/route-added-later"), ("POST", "/health"), ("POST", "/v1/embeddings"),
                         ("POST", "/api/chat")]:
        async with http.request(method, daemon.url + path, json={"model": "a"}) as resp:
            body = await resp.json()
            assert resp.status == 401, (method, path, body)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert "API key" in (body["error"] if isinstance(body["error"], str) else body["error"]["message"])
    async with http.get(daemon.url + "/health") as resp:
        assert resp.status == 200
    # the page's shell is static and holds no data (everything it shows comes from /ui/events,
    # /load, /unload and /logs, each behind the key, which the page takes once as /ui#key=…)
    async with http.get(daemon.url + "/ui") as resp:
        shell = await resp.text()
        assert resp.status == 200 and "/ui/ui.js" in shell
    async with http.get(daemon.url + "/ui/ui.js") as resp:
        shell += await resp.text()
        assert resp.status == 200 and "/ui/events" in shell
    assert "a.service" not in shell and a.unit not in shell
    # a wrong scheme or an empty bearer is no key either
    for headers in ({"Authorization": ADMIN}, {"Authorization": "Basic " + ADMIN}, {"Authorization": "Bearer "}):
        async with http.get(daemon.url + "/status", headers=headers) as resp:
            assert resp.status == 401, headers
    assert harness.http_get(daemon.url + "/status")[0] == 401
    assert len(a.records("request")) + len(b.records("request")) == before  # nothing reached a backend


async def test_admin_routes_with_the_right_key(keyed, http):
    daemon, _ = keyed
    async with http.get(daemon.url + "/status", headers=bearer(ADMIN)) as resp:
        assert resp.status == 200
        assert ADMIN not in await resp.text()
    async with http.get(daemon.url + "/nope", headers={"x-api-key": ADMIN}) as resp:
        assert resp.status == 404  # a right key gets to the router
    async with http.post(daemon.url + "/unload", headers={"x-api-key": ADMIN}) as resp:
        assert resp.status == 200


async def test_anthropic_client_with_x_api_key(keyed):
    daemon, (a, _) = keyed
    client = anthropic.AsyncAnthropic(base_url=daemon.url, api_key=ROO, max_retries=0)
    message = await client.messages.create(model="alpha", max_tokens=8,
                                           messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "hi from a"
    request = [r for r in a.records("request") if r["path"] == "/v1/messages"][-1]
    seen = {k.lower(): v for k, v in request["headers"].items()}
    assert "x-api-key" not in seen and "authorization" not in seen, seen
    assert ROO not in json.dumps(request)
    bad = anthropic.AsyncAnthropic(base_url=daemon.url, api_key=WRONG, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        await bad.messages.create(model="a", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401


async def test_a_key_limited_to_some_models(keyed, http):
    daemon, (_, b) = keyed
    client = _openai(daemon, ROO)
    raw = await client.chat.completions.with_raw_response.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.status_code == 200
    starts = len(b.records("start"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        await client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403 and e.value.code == "model_not_allowed"
    assert "roo" in e.value.message and ROO not in e.value.message
    assert len(b.records("start")) == starts  # refused before anything switched
    assert [m.id async for m in client.models.list()] == ["a"]  # it sees its models only
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.retrieve("b")
    # an unknown name: the 404 names the key's models only
    for ask in (client.models.retrieve("nope"),
                client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError) as e:
            await ask
        assert "this switch serves: a" in e.value.message and "b" not in e.value.message.split("serves:")[1]
    with pytest.raises(anthropic.PermissionDeniedError):
        await anthropic.AsyncAnthropic(base_url=daemon.url, api_key=ROO, max_retries=0).messages.create(
            model="b", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    # the admin routes need a key for all models
    for method, path in [("GET", "/status"), ("POST", "/unload"), ("POST", "/load/a"), ("GET", "/api/tags")]:
        async with http.request(method, daemon.url + path, headers=bearer(ROO)) as resp:
            assert resp.status == 403, (method, path)


async def test_backend_api_key_replaces_the_clients_key(keyed, http):
    daemon, _ = keyed
    for headers in (bearer(ADMIN), {"x-api-key": ADMIN}, {**bearer(ADMIN), "x-api-key": ADMIN}):
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("b"),
                                          headers=headers)
        assert status == 200, body
        seen = _headers_seen(body)
        assert seen["authorization"] == f"Bearer {BACKEND_KEY}", seen
        assert "x-api-key" not in seen and ADMIN not in json.dumps(seen)


async def test_llama_server_with_its_own_api_key(deploy, tiny_models, http):
    """A real llama-server run with --api-key answers through the switch with backend_api_key,
    and refuses (the 401 passes through) without it."""
    llama_key = "llama-own-key-0123456789"
    ok = deploy.llama_unit("ok", tiny_models["a"], extra_args=["--api-key", llama_key])
    bare = deploy.llama_unit("bare", tiny_models["b"], extra_args=["--api-key", llama_key])
    daemon = deploy.up({"ok": {"unit": ok.unit, "url": ok.url, "backend_api_key": llama_key},
                        "bare": {"unit": bare.unit, "url": bare.url}},
                       api_keys=[ADMIN])
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("ok"),
                                      headers=bearer(ADMIN))
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"
    # the client's own key is not the backend's: without backend_api_key llama-server says 401
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("bare"),
                                      headers=bearer(llama_key))
    assert status == 401, body  # the switch's: llama_key is no key of the switch
    assert body["error"]["code"] == "invalid_api_key"
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("bare"),
                                      headers=bearer(ADMIN))
    assert status == 401, body  # llama-server's own, passed through: it got no key
    assert "invalid_api_key" not in json.dumps(body)


# -- who may listen where ------------------------------------------------------------------------


def test_off_loopback_without_keys_is_refused(deploy):
    port = free_port()
    config = deploy.write_config({"a": "a.service"}, listen=f"0.0.0.0:{port}")
    res = deploy.cli("serve", "--config", str(config), timeout=60)
    assert res.returncode == 2, res
    assert f"listen: 0.0.0.0:{port} can be reached from other machines, but api_keys is empty" in res.stderr
    assert "allow_unauthenticated" in res.stderr and "setup.sh --lan" in res.stderr
    # --listen is held to the same rule
    config = deploy.write_config({"a": "a.service"}, name="loopback.yaml")
    res = deploy.cli("serve", "--config", str(config), "--listen", f"0.0.0.0:{port}", timeout=60)
    assert res.returncode == 2 and "api_keys is empty" in res.stderr, res
    res = deploy.cli("check", "--config", str(deploy.dir / "config.yaml"), timeout=60)
    assert res.returncode == 1 and "api_keys is empty" in res.stderr, res  # check: 1 for any problem


async def test_off_loopback_with_keys_and_metrics_public(deploy, http):
    s = deploy.scripted_unit("s", {"routes": {"*": {"json": {"ok": True}}}})
    port = free_port()
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}}, listen=f"0.0.0.0:{port}",
                       api_keys=[ADMIN], metrics_public=True)
    url = f"http://127.0.0.1:{port}"
    async with http.get(url + "/metrics") as resp:
        assert resp.status != 401  # open by choice (404 until the switch serves metrics)
    async with http.get(url + "/status") as resp:
        assert resp.status == 401
    status, body, _ = await post_json(http, url + "/v1/chat/completions", chat_body("s"), headers=bearer(ADMIN))
    assert (status, body) == (200, {"ok": True})
    assert "API keys required (except for GET /health, /metrics): key-0" in daemon.log()  # never its characters


def test_allow_unauthenticated_is_warned_at_every_start(deploy):
    port = free_port()
    deploy.write_config({"a": "a.service"}, listen=f"0.0.0.0:{port}", allow_unauthenticated=True)
    for _ in range(2):
        daemon = deploy.start(listen=f"127.0.0.1:{port}")
        assert harness.http_get(daemon.url + "/status")[0] == 200  # no keys: open, as configured
        daemon.stop()
    lines = [line for d in deploy.daemons for line in d.log().splitlines()
             if "WARNING" in line and "allow_unauthenticated: true" in line]
    assert len(lines) == 2, lines


# -- the journal ----------------------------------------------------------------------------------


async def test_no_key_reaches_the_journal(tmp_path, llama_server):
    """The switch as a unit under journald, with --debug: keys used right, wrong, limited, and a
    backend key. The journal names keys, never holds one."""
    env_key = "env-key-fedcba9876543210"
    with harness.UserManager(journal=True) as um:
        d = harness.Deployment(um, tmp_path, "jk", llama=llama_server)
        try:
            s = d.scripted_unit("s", {"routes": {"*": {"echo": True}}})
            t = d.scripted_unit("t", {"routes": {"*": {"echo": True}}})
            port = free_port()
            config = d.write_config(
                {"s": {"unit": s.unit, "url": s.url, "backend_api_key": BACKEND_KEY},
                 "t": {"unit": t.unit, "url": t.url}},
                listen=f"127.0.0.1:{port}",
                api_keys=[{"key": ADMIN, "name": "admin"}, {"key_env": "LLMT_SWITCH_KEY"},
                          {"key": ROO, "name": "roo", "models": ["s"]}])
            switch = d.command_unit("switch", [sys.executable, "-m", "llm_switch", "serve", "--config",
                                               str(config), "--debug"], to_journal=True,
                                    env={**um.env, "LLMT_SWITCH_KEY": env_key, "PYTHONUNBUFFERED": "1"})
            d.reload()
            um.systemctl("start", switch.unit)
            url = f"http://127.0.0.1:{port}"
            harness.wait_for(lambda: harness.http_get(url + "/health")[0] == 200, 60, what="the switch up")
            async with aiohttp.ClientSession() as http:
                for key, model in ((ADMIN, "s"), (env_key, "t"), (ROO, "s"), (ROO, "t"), (WRONG, "s")):
                    for headers in (bearer(key), {"x-api-key": key}):
                        await post_json(http, url + "/v1/chat/completions", chat_body(model), headers=headers)
                for key in (ADMIN, ROO, WRONG):
                    async with http.get(url + "/status", headers=bearer(key)):
                        pass
                async with http.get(url + "/status"):
                    pass
            um.systemctl("kill", "-s", "HUP", switch.unit)  # a reload reads the keys again
            harness.wait_for(lambda: any("config reloaded" in str(e.get("MESSAGE"))
                                         for e in um.journal_json(switch.unit)),
                             30, interval=0.2, what="the switch's reload in the journal")
            async with aiohttp.ClientSession() as http:
                status, _, _ = await post_json(http, url + "/v1/chat/completions", chat_body("t"),
                                               headers=bearer(env_key))
                assert status == 200
            um.systemctl("stop", switch.unit)
            entries = um.journal_json()
            mine = um.journal_json(switch.unit)
            text = "\n".join(str(e.get("MESSAGE")) for e in mine)
            assert "key roo: refused model t" in text, text  # keys are named ...
            assert "key admin: POST /v1/chat/completions" in text, text  # (a debug line)
            assert "key key-1: POST /v1/chat/completions" in text, text  # ... by their index when they have no name
            dump = json.dumps(entries)
            for secret in (ADMIN, ROO, WRONG, env_key, BACKEND_KEY):
                assert secret not in dump, secret  # ... and never shown
        finally:
            d.close()
