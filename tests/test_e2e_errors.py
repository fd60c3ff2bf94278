"""Errors a client sees, end to end: the switch's own (OpenAI-shaped) and the backend's (as is)."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from support import harness
from support.factories import module_deployment
from support.harness import chat_body, post_json


def assert_openai_error(status: int, body, want_status: int, want_type: str, want_code: str):
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert (err["type"], err["code"]) == (want_type, want_code), err
    assert "Traceback" not in err["message"]
    return err["message"]


# -- the switch's own 4xx: one daemon for the module, no backend needs to run -----------------


@module_deployment("err")
def cheap(d):
    """A switch with two models whose units exist but are never started by these tests."""
    a = d.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
    b = d.scripted_unit("b", {"routes": {"*": {"json": {"from": "b"}}}})
    daemon = d.up({"alpha": {"unit": a.unit, "url": a.url},
                   "beta": {"unit": b.unit, "url": b.url, "aliases": ["bee"]}},
                  max_body_bytes=4096)
    return daemon, (a, b)


async def test_body_not_json_is_400(cheap, http):
    daemon, _ = cheap
    status, body, resp = await post_json(http, daemon.url + "/v1/chat/completions", b"{nope")
    assert_openai_error(status, body, 400, "invalid_request_error", "invalid_json")
    assert resp.content_type == "application/json"


@pytest.mark.parametrize("payload", [
    {"messages": []},
    {"model": None, "messages": []},
    {"model": 7, "messages": []},
    {"model": ["alpha"]},
    ["alpha"],
    "alpha",
])
async def test_model_missing_or_not_a_string_is_400(cheap, http, payload):
    daemon, _ = cheap
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      json.dumps(payload))
    assert_openai_error(status, body, 400, "invalid_request_error", "missing_model")


async def test_unknown_model_is_404_naming_the_known_ones(cheap, http):
    daemon, _ = cheap
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("gpt-4o"))
    message = assert_openai_error(status, body, 404, "invalid_request_error", "model_not_found")
    assert "gpt-4o" in message
    for known in ("alpha", "beta", "bee"):
        assert known in message
    async with http.get(daemon.url + "/v1/models/gpt-4o") as resp:
        assert_openai_error(resp.status, await resp.json(), 404, "invalid_request_error",
                            "model_not_found")


async def test_body_over_max_body_bytes_is_413(cheap, http):
    daemon, (a, _) = cheap
    big = chat_body("alpha", "x" * 10_000)
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", big)
    message = assert_openai_error(status, body, 413, "invalid_request_error", "request_too_large")
    assert "4096" in message


async def test_chunked_body_over_max_body_bytes_is_413(cheap, http):
    """No Content-Length (chunked upload): the limit still holds."""
    daemon, _ = cheap

    async def chunks():
        yield b'{"model": "alpha", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}]}'

    async with http.post(daemon.url + "/v1/chat/completions", data=chunks(),
                         headers={"Content-Type": "application/json"}) as resp:
        assert_openai_error(resp.status, await resp.json(), 413, "invalid_request_error",
                            "request_too_large")


async def test_client_errors_start_nothing(cheap, http, user_manager):
    """None of the requests above may have started a unit."""
    daemon, (a, b) = cheap
    await post_json(http, daemon.url + "/v1/chat/completions", b"{nope")
    await post_json(http, daemon.url + "/v1/chat/completions", chat_body("alpha", "x" * 10_000))
    assert user_manager.active_units("scripted-err@*") == []
    assert a.records("start") == [] and b.records("start") == []


async def test_unknown_route_is_an_openai_error_not_html(cheap, http):
    daemon, _ = cheap
    async with http.get(daemon.url + "/nope") as resp:
        assert resp.status == 404
        body = await resp.json()
        assert set(body["error"]) >= {"message", "type", "code"}


# -- failures of units and backends ----------------------------------------------------------


async def test_broken_execstart_is_502_fast_with_systemds_reason(deploy, http):
    broken = deploy.command_unit("broken", ["/nonexistent/llama-server", "--port", "1"])
    daemon = deploy.up({"broken": {"unit": broken.unit, "url": "http://127.0.0.1:9"}},
                       health_timeout=120)
    t0 = time.monotonic()
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("broken"))
    elapsed = time.monotonic() - t0
    message = assert_openai_error(status, body, 502, "backend_error", "start_failed")
    assert elapsed < 30, f"took {elapsed:.1f} s; a failed unit must be reported at once"
    assert broken.unit in message
    # systemd's result for a missing executable: Result=exit-code, status 203/EXEC
    assert any(word in message for word in ("exit-code", "203", "EXEC")), message
    assert daemon.get_json("/v1/models")["data"][0]["state"] == "failed"
    [entry] = daemon.get_json("/status")["models"]
    assert entry["reason"], entry


async def test_cmd_model_with_a_missing_program_is_502_with_the_reason(deploy, http):
    """A ``cmd:`` typo must say what went wrong, not only that a job failed."""
    name = f"nocmd{deploy.tag}"
    unit = deploy.expect_transient(name)
    daemon = deploy.up({name: {"cmd": "/nonexistent/llama-server --port 9",
                               "url": "http://127.0.0.1:9"}})
    t0 = time.monotonic()
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(name))
    message = assert_openai_error(status, body, 502, "backend_error", "start_failed")
    assert time.monotonic() - t0 < 30
    assert unit in message
    # systemd: Result=exit-code, ExecMainStatus=203 (EXEC); or the switch names the program
    assert any(w in message for w in ("exit-code", "203", "EXEC", "/nonexistent/llama-server")), \
        message


async def test_unit_that_exits_while_starting_is_502(deploy, http):
    """The process starts, then dies before it is healthy (e.g. a model file that won't load)."""
    dying = deploy.command_unit("dying", ["/bin/sh", "-c", "sleep 0.5; echo 'cannot load model' >&2; exit 3"])
    daemon = deploy.up({"dying": {"unit": dying.unit, "url": f"http://127.0.0.1:{harness.free_port()}"}},
                       health_timeout=120)
    t0 = time.monotonic()
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("dying"))
    message = assert_openai_error(status, body, 502, "backend_error", "start_failed")
    assert time.monotonic() - t0 < 30
    assert dying.unit in message
    assert "exit-code" in message or "3" in message, message


async def test_missing_unit_is_502_unit_not_found(deploy, http):
    unit = f"does-not-exist-{deploy.tag}.service"
    daemon = deploy.up({"ghost": unit})
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("ghost"))
    message = assert_openai_error(status, body, 502, "backend_error", "unit_not_found")
    assert unit in message


async def test_backend_that_never_turns_healthy_is_504(deploy, http, user_manager):
    sick = deploy.scripted_unit("sick", {"health": "fail"})
    daemon = deploy.up({"sick": {"unit": sick.unit, "url": sick.url, "health_timeout": 3}})
    t0 = time.monotonic()
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("sick"))
    elapsed = time.monotonic() - t0
    message = assert_openai_error(status, body, 504, "timeout_error", "health_timeout")
    assert "sick" in message
    assert 2.5 <= elapsed < 60, elapsed
    assert sick.records("request") == []  # nothing was forwarded to an unhealthy backend


async def test_stale_server_answering_as_another_model_is_never_used(deploy, http):
    """A server left on the shared port that reports another configured model's id (started by
    hand, outside the switch) must not get requests meant for this model."""
    port = harness.free_port()
    stale = deploy.scripted_unit("stale", {"model": "other"}, port=port)
    deploy.reload()
    deploy.um.systemctl("start", stale.unit)
    harness.wait_for(lambda: harness.http_get(stale.url + "/health")[0] == 200, 60)
    quiet = deploy.command_unit("quiet", ["/bin/sleep", "infinity"])  # runs, never listens
    other = deploy.command_unit("other", ["/bin/sleep", "infinity"])
    daemon = deploy.up({
        "want": {"unit": quiet.unit, "url": f"http://127.0.0.1:{port}", "health_timeout": 4},
        "other": {"unit": other.unit, "url": f"http://127.0.0.1:{port}"},
    })
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                      chat_body("want"))
    assert status in (502, 504), body
    assert body["error"]["type"] in ("backend_error", "timeout_error"), body
    assert stale.records("request") == [], "the request went to the wrong model"


async def test_backend_error_status_and_body_pass_through(deploy, http):
    err_json = {"error": {"message": "boom from backend", "type": "server_error", "code": 500}}
    s = deploy.scripted_unit("s", {"routes": {
        "/v1/chat/completions": {"status": 500, "json": err_json},
        "/v1/completions": {"status": 400, "body": "plain text says no",
                            "content_type": "text/plain"},
        "/v1/embeddings": {"status": 429, "json": {"error": {"message": "slow down"}},
                           "headers": {"Retry-After": "7"}},
    }})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}})
    status, body, resp = await post_json(http, daemon.url + "/v1/chat/completions",
                                         chat_body("s"))
    assert (status, body) == (500, err_json)
    status, body, resp = await post_json(http, daemon.url + "/v1/completions",
                                         {"model": "s", "prompt": "x"})
    assert (status, body) == (400, b"plain text says no")
    assert resp.content_type == "text/plain"
    status, body, resp = await post_json(http, daemon.url + "/v1/embeddings",
                                         {"model": "s", "input": "x"})
    assert (status, body) == (429, {"error": {"message": "slow down"}})
    assert resp.headers.get("Retry-After") == "7"
    # the model stays ready: a backend's error is not the switch's failure
    assert daemon.get_json("/v1/models")["data"][0]["state"] == "ready"


async def test_backend_dying_mid_request_is_502(deploy, http):
    s = deploy.scripted_unit("s", {"routes": {"/v1/chat/completions": {"exit": True},
                                              "/v1/completions": {"json": {"ok": True}}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}})
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("s"))
    assert status == 502, body
    assert body["error"]["type"] == "backend_error", body
    # the unit died; once systemd has noticed, the next request starts it again
    harness.wait_for(lambda: not deploy.um.active_units(s.unit), 30, what=f"{s.unit} down")
    status, body, _ = await post_json(http, daemon.url + "/v1/completions",
                                      {"model": "s", "prompt": "x"})
    assert (status, body) == (200, {"ok": True})
    assert len(s.records("start")) == 2


async def test_failed_start_reports_the_units_last_journal_lines(tmp_path, llama_server):
    """With a journal there, the 502 carries the unit's last log lines (llama-server says why
    it could not load the model). The switch runs where the journal is: inside the manager's
    mount namespace, as on a machine booted with systemd."""
    with harness.UserManager(journal=True) as um:
        d = harness.Deployment(um, tmp_path, "jr", llama=llama_server)
        try:
            dying = d.command_unit("dying", [
                "/bin/sh", "-c",
                "echo 'llama_model_load: error loading model: zz-marker-4711'; sleep 0.3; exit 1",
            ], to_journal=True)
            d.write_config({"dying": {"unit": dying.unit, "url": "http://127.0.0.1:9"}})
            daemon = d.start(namespace_pid=um.namespace_pid)
            async with aiohttp.ClientSession() as http:
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                                  chat_body("dying"))
            message = assert_openai_error(status, body, 502, "backend_error", "start_failed")
            # the line did reach the journal, attributed to the unit
            assert any("zz-marker-4711" in e.get("MESSAGE", "")
                       for e in um.journal_json(dying.unit))
            assert "zz-marker-4711" in message, message
        finally:
            d.close()
