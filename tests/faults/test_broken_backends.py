"""Units and backends that break: a unit that cannot start, exits while starting, is missing or
never turns healthy; a stale server on the model's port; a backend that errs, or dies during a
request or a stream. The client gets an OpenAI-shaped error naming the cause (or the backend's
own error as it was), and the next request starts the unit again."""

from __future__ import annotations

import time

import aiohttp

from support import harness
from support.answers import delta
from support.checks import assert_openai_error
from support.harness import chat_body, post_json, sse_lines, wait_for


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


async def test_backend_dying_mid_stream_ends_the_clients_stream(deploy):
    """The client is not left hanging: it gets what was sent, then the stream ends."""
    s = deploy.scripted_unit("s", {"routes": {
        "/v1/chat/completions": {"sse": {"repeat": delta(), "count": 3}, "interval": 0.1,
                                 "done": False, "then": "exit"},
        "/v1/completions": {"json": {"ok": True}}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}})
    lines: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.post(daemon.url + "/v1/chat/completions",
                             json=chat_body("s", stream=True)) as resp:
            assert resp.status == 200
            try:
                async for _, line in sse_lines(resp):
                    lines.append(line)
            except aiohttp.ClientPayloadError:
                pass  # an abrupt end is an honest end
        assert len(lines) >= 3 and "[DONE]" not in "".join(lines)
        # the unit died with its process; once systemd has noticed, the next request brings
        # it back
        wait_for(lambda: not deploy.um.active_units(s.unit), 30, what=f"{s.unit} down")
        status, body, _ = await post_json(http, daemon.url + "/v1/completions",
                                          {"model": "s", "prompt": "x"})
        assert (status, body) == (200, {"ok": True})
