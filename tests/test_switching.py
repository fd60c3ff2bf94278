"""Switching, end to end: real systemd --user, real llama-server units, the daemon as users run it.

systemd's own view (``systemctl --user``) is the judge of what runs; the switch never gets to
grade itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time

import aiohttp

from support.harness import (UnitSampler, chat_body, free_port, http_get, llama_args, post_json, shell_join,
                             sse_lines, wait_for)


def backend_model_id(url: str) -> str | None:
    """The model id the server on ``url`` reports itself (llama-server: its --alias)."""
    status, body = http_get(url + "/v1/models", timeout=10)
    if status != 200:
        return None
    return json.loads(body)["data"][0]["id"]


def states(daemon) -> dict[str, str]:
    return {m["id"]: m["state"] for m in daemon.get_json("/v1/models")["data"]}


async def test_switch_a_b_a_one_unit_at_a_time(deploy, tiny_models, user_manager):
    """A → B → A on one shared port; systemd never shows both units up at once."""
    port = free_port()
    a = deploy.llama_unit("a", tiny_models["a"], port=port)
    b = deploy.llama_unit("b", tiny_models["b"], port=port)
    daemon = deploy.up({"a": a.unit, "b": b.unit}, backend=f"http://127.0.0.1:{port}",
                       health_timeout=120)
    assert states(daemon) == {"a": "stopped", "b": "stopped"}

    async with aiohttp.ClientSession() as http:
        with UnitSampler(user_manager, f"llama-server-{deploy.tag}@*") as sampler:
            for model in (a, b, a):
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                                  chat_body(model.name))
                assert status == 200, body
                assert body["choices"][0]["message"]["role"] == "assistant"
                # systemd's view right after the reply: exactly this unit
                assert user_manager.active_units(f"llama-server-{deploy.tag}@*") == [model.unit]
                # the process on the shared port is the one asked for
                assert backend_model_id(model.url) == model.name
                assert states(daemon)[model.name] == "ready"
        assert sampler.samples, "no systemctl sample taken"
        assert sampler.max_active() <= 1, f"two units up at once: {sampler.overlaps()[:5]}"
        assert sampler.seen() == {a.unit, b.unit}
    # systemd ran ExecStopPost of one unit before ExecStartPre of the other, every time
    assert len(a.runs()) == 2 and len(b.runs()) == 1
    assert deploy.overlapping_runs([a, b]) == []

    assert states(daemon) == {"a": "ready", "b": "stopped"}
    switches = daemon.get_json("/status")["switches"]
    assert [(s["from"], s["to"], s["ok"]) for s in switches[-3:]] == \
        [(None, "a", True), ("a", "b", True), ("b", "a", True)]
    running = daemon.get_json("/running")["running"]
    assert [(r["model"], r["unit"], r["state"]) for r in running] == [("a", a.unit, "ready")]
    # one log line per switch, with durations (contract: "switch a → b: stopped a in 0.01 s,
    # b ready in 0.20 s")
    log = daemon.log()
    assert re.search(r"switch a → b: stopped a in \d+\.\d+ s, b ready in \d+\.\d+ s", log), log
    assert re.search(r"switch b → a: stopped b in \d+\.\d+ s, a ready in \d+\.\d+ s", log), log


async def test_alias_routes_to_its_model(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url},
                        "b": {"unit": b.unit, "url": b.url, "aliases": ["bee", "b-latest"]}})
    listed = {m["id"]: m for m in daemon.get_json("/v1/models")["data"]}
    assert listed["b"]["aliases"] == ["bee", "b-latest"]
    assert listed["b"]["unit"] == b.unit
    assert daemon.get_json("/v1/models/bee")["id"] == "b"

    async with aiohttp.ClientSession() as http:
        for alias in ("bee", "b-latest"):
            status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                              chat_body(alias))
            assert status == 200, body
            assert user_manager.active_units(f"*-{deploy.tag}@*") == [b.unit]
    assert states(daemon)["b"] == "ready"


async def test_concurrent_requests_for_a_stopped_model_start_it_once(deploy, user_manager):
    """N requests arrive while B is stopped (and A runs): one switch, one B process."""
    a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
    b = deploy.scripted_unit("b", {"health": {"ok_after": 1.5},
                                   "routes": {"*": {"json": {"from": "b"}}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}})
    n = 8
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("a"))
        assert (status, body) == (200, {"from": "a"})
        seen_states: set[str] = set()

        async def watch() -> None:
            while True:
                async with http.get(daemon.url + "/v1/models") as resp:
                    seen_states.update(m["state"] for m in (await resp.json())["data"]
                                       if m["id"] == "b")
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(
            post_json(http, daemon.url + "/v1/chat/completions", chat_body("b", f"q{i}"))
            for i in range(n)))
        watcher.cancel()
    assert "starting" in seen_states, seen_states
    assert [(s, body) for s, body, _ in results] == [(200, {"from": "b"})] * n
    assert len(b.records("start")) == 1, b.records("start")
    # /health was polled at a short interval (tens of ms), not once a second: in the 1.5 s
    # before B turned healthy there were many probes (loose bound, fine under load)
    polls = [r for r in b.records("health") if r["status"] == 503]
    assert len(polls) >= 5, polls
    assert len(b.records("request")) == n
    assert len(a.records("start")) == 1
    switches = [s for s in daemon.get_json("/status")["switches"] if s["to"] == "b"]
    assert len(switches) == 1, switches
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [b.unit]


async def test_long_stream_on_a_is_not_cut_when_b_is_requested(deploy, user_manager):
    """Drain, never cut: B waits until A's stream is done, then A stops and B serves."""
    chunks = 12
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {
        "sse": {"repeat": {"choices": [{"index": 0, "delta": {"content": "a{i} "}}]},
                "count": chunks},
        "interval": 0.25}}})
    b = deploy.scripted_unit("b", {"routes": {"*": {"json": {"from": "b"}}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       loading_progress="off")  # the relayed bytes alone

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        first_chunk = asyncio.Event()

        async def stream_a() -> tuple[list[str], float]:
            lines = []
            async with http.post(daemon.url + "/v1/chat/completions",
                                 json=chat_body("a", stream=True)) as resp:
                assert resp.status == 200
                async for _, line in sse_lines(resp):
                    lines.append(line)
                    first_chunk.set()
            return lines, time.time()

        async def request_b() -> tuple[int, object, float]:
            await first_chunk.wait()
            status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                              chat_body("b"))
            return status, body, time.time()

        with UnitSampler(user_manager, f"scripted-{deploy.tag}@*") as sampler:
            (lines, a_done), (b_status, b_body, b_done) = await asyncio.gather(stream_a(),
                                                                              request_b())
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert len(lines) == chunks + 1
    assert (b_status, b_body) == (200, {"from": "b"})
    assert b_done >= a_done - 0.5  # loose: B answered after A's stream ended
    # the backend's own record: A's stream completed, and B's process started only after that
    [a_complete] = a.records("complete")
    assert not a.records("disconnect")
    [b_start] = b.records("start")
    assert b_start["t"] >= a_complete["t"], (b_start, a_complete)
    assert sampler.max_active() <= 1, sampler.overlaps()[:5]
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [b.unit]


async def test_already_running_unit_is_adopted_not_restarted(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    deploy.reload()
    user_manager.systemctl("start", a.unit)
    wait_for(lambda: http_get(a.url + "/health")[0] == 200, 60, what=f"{a.unit} healthy")
    before = user_manager.show(a.unit, "MainPID", "InvocationID")
    assert int(before["MainPID"]) > 0

    config = deploy.write_config({"a": {"unit": a.unit, "url": a.url},
                                  "b": {"unit": b.unit, "url": b.url}})
    daemon = deploy.start(config)
    assert states(daemon) == {"a": "ready", "b": "stopped"}
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("a"))
    assert status == 200, body
    assert user_manager.show(a.unit, "MainPID", "InvocationID") == before
    assert [s for s in daemon.get_json("/status")["switches"] if s["to"] == "a"] == []

    # on exit the switch leaves units as they are
    assert daemon.stop() == 0
    assert user_manager.show(a.unit, "MainPID", "InvocationID") == before
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [a.unit]

    # and a restarted switch adopts it again
    daemon2 = deploy.start(config)
    assert states(daemon2)["a"] == "ready"
    assert user_manager.show(a.unit, "MainPID", "InvocationID") == before


async def test_cmd_model_runs_as_a_transient_unit(deploy, tiny_models, user_manager, llama_server):
    server, env = llama_server
    port = free_port()
    name = f"tiny{deploy.tag}"
    argv = llama_args(server, tiny_models["a"], port, alias=name)
    if env:
        argv = ["/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), *argv]
    transient = deploy.expect_transient(name)
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({name: {"cmd": shell_join(argv), "url": f"http://127.0.0.1:{port}"},
                        "b": {"unit": b.unit, "url": b.url}})
    assert {m["id"]: m["unit"] for m in daemon.get_json("/v1/models")["data"]}[name] == transient

    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body(name))
        assert status == 200, body
        shown = user_manager.show(transient, "ActiveState", "Type", "MainPID")
        assert shown["ActiveState"] == "active"
        assert shown["Type"] == "exec"
        assert backend_model_id(f"http://127.0.0.1:{port}") == name

        # switching away stops the transient unit like any other
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("b"))
        assert status == 200, body
    assert user_manager.show(transient, "ActiveState")["ActiveState"] in ("inactive", "")
    assert user_manager.active_units("llm-switch-*") == []
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 0  # nothing listens there now

    async with aiohttp.ClientSession() as http:  # and it starts again on demand
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body(name))
        assert status == 200, body
    assert user_manager.active_units("llm-switch-*") == [transient]


async def test_seed_config_format_still_works(deploy, tiny_models, user_manager):
    """The seed project's config.yaml (server: host/port/llama_url/trace_log, flat models)."""
    shared = free_port()
    listen = free_port()
    a = deploy.llama_unit("a", tiny_models["a"], port=shared)
    b = deploy.llama_unit("b", tiny_models["b"], port=shared)
    trace = deploy.dir / "trace.log"
    config = deploy.write_config(raw=f"""\
server:
  host: 127.0.0.1
  port: {listen}
  llama_url: http://127.0.0.1:{shared}
  trace_log: {trace}

models:
  a: {a.unit}
  b: {b.unit}
""")
    daemon = deploy.start(config)
    assert daemon.url == f"http://127.0.0.1:{listen}"
    assert "trace_log" in daemon.log()  # ignored, with a warning
    async with aiohttp.ClientSession() as http:
        for model in (a, b):
            status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                              chat_body(model.name))
            assert status == 200, body
            assert user_manager.active_units(f"*-{deploy.tag}@*") == [model.unit]
            assert backend_model_id(model.url) == model.name
    assert not trace.exists()


async def test_unload_stops_after_draining(deploy, user_manager):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {
        "sse": {"repeat": {"choices": [{"index": 0, "delta": {"content": "x"}}]}, "count": 8},
        "interval": 0.25}}})
    b = deploy.scripted_unit("b", {"routes": {"*": {"json": {"from": "b"}}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       loading_progress="off")  # the relayed bytes alone
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        got_first = asyncio.Event()

        async def stream() -> list[str]:
            lines = []
            async with http.post(daemon.url + "/v1/chat/completions",
                                 json=chat_body("a", stream=True)) as resp:
                async for _, line in sse_lines(resp):
                    lines.append(line)
                    got_first.set()
            return lines

        async def unload() -> tuple[int, object]:
            await got_first.wait()
            async with http.post(daemon.url + "/unload/a") as resp:
                return resp.status, await resp.json()

        lines, (status, body) = await asyncio.gather(stream(), unload())
        assert lines[-1] == "data: [DONE]" and len(lines) == 9
        assert (status, body) == (200, {"unloaded": ["a"]})
        assert a.records("complete") and not a.records("disconnect")
        assert user_manager.active_units(f"*-{deploy.tag}@*") == []
        assert states(daemon) == {"a": "stopped", "b": "stopped"}

        async with http.post(daemon.url + "/unload/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"

        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("b"))
        assert status == 200
        async with http.post(daemon.url + "/unload") as resp:
            assert resp.status == 200
            assert (await resp.json())["unloaded"] == ["b"]
    assert user_manager.active_units(f"*-{deploy.tag}@*") == []


async def test_cmd_model_unit_name_is_llm_switch_dash_name(deploy):
    """Contract: a ``cmd:`` model runs as ``llm-switch-<name>.service``; '-' is valid in unit
    names, so a name like qwen3-coder must not turn into llm-switch-qwen3\\x2dcoder.service."""
    daemon = deploy.up({"qwen3-coder": {"cmd": "/bin/true", "url": "http://127.0.0.1:9"}})
    [entry] = daemon.get_json("/v1/models")["data"]
    assert entry["unit"] == "llm-switch-qwen3-coder.service"


async def test_any_v1_post_is_forwarded_with_path_query_headers_and_body(deploy):
    s = deploy.scripted_unit("s", {"routes": {"*": {"echo": True}}})
    daemon = deploy.up({"s": {"unit": s.unit, "url": s.url}})
    body = {"model": "s", "input": "ünïcode ✓", "extra": {"nested": [1, 2.5, None]}}
    raw = json.dumps(body, ensure_ascii=False).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.url + "/v1/rerank?top_n=2&x=y", data=raw, headers={
                "Content-Type": "application/json", "Authorization": "Bearer sk-local",
                "X-Custom": "kept",
                # hop-by-hop: for the switch, not for the backend
                "Keep-Alive": "timeout=5", "TE": "trailers",
                "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0"}) as resp:
            assert resp.status == 200
            echo = await resp.json()
    assert echo["path"] == "/v1/rerank"
    assert echo["query"] == "top_n=2&x=y"
    assert echo["body"] == body
    headers = {k.lower(): v for k, v in echo["headers"].items()}
    assert headers["x-custom"] == "kept"
    # hop-by-hop: for the switch, not for the backend; nor is a client's key (backend_api_key is)
    for hop in ("keep-alive", "te", "proxy-authorization", "authorization"):
        assert hop not in headers, (hop, headers)
    [rec] = s.records("request")
    assert rec["body"] == body


async def test_prompts_are_not_logged_at_info(deploy, tiny_models):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    secret = "zebra-unicorn-4471"
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(
            http, daemon.url + "/v1/chat/completions", chat_body("a", f"my secret {secret}"),
            headers={"Authorization": "Bearer sk-very-secret-key"})
        assert status == 200, body
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("nope", secret))
        assert status == 404
    log = daemon.log()
    assert secret not in log
    assert "sk-very-secret-key" not in log


async def test_sighup_rereads_the_config_and_keeps_the_old_one_when_bad(deploy, user_manager):
    a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
    c = deploy.scripted_unit("c", {"routes": {"*": {"json": {"from": "c"}}}})
    listen = f"127.0.0.1:{free_port()}"
    config = deploy.write_config({"a": {"unit": a.unit, "url": a.url}}, listen=listen)
    daemon = deploy.start(config)
    assert [m["id"] for m in daemon.get_json("/v1/models")["data"]] == ["a"]

    deploy.write_config({"a": {"unit": a.unit, "url": a.url},
                         "c": {"unit": c.unit, "url": c.url}}, listen=listen)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: [m["id"] for m in daemon.get_json("/v1/models")["data"]] == ["a", "c"],
             30, what="the new model after SIGHUP")
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("c"))
        assert (status, body) == (200, {"from": "c"})

        deploy.write_config(raw="models: [this is not a mapping\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log() or daemon.proc.poll() is not None,
                 30, what="the bad config refused after SIGHUP")
        assert daemon.proc.poll() is None, daemon.log()
        assert [m["id"] for m in daemon.get_json("/v1/models")["data"]] == ["a", "c"]
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("a"))
        assert (status, body) == (200, {"from": "a"})
    assert "ERROR" in daemon.log() or "<3>" in daemon.log(), daemon.log()

