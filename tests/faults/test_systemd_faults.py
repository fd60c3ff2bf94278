"""Nothing systemd does surprises the switch: the bus going away, units stopped, killed or failing
behind its back, and a failed unit fixed. (SIGTERM to the switch itself: test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from support.harness import Deployment, UserManager, chat_body, free_port, post_json, wait_for, wait_for_async


def model_state(daemon, name: str) -> str:
    return {m["id"]: m["state"] for m in daemon.get_json("/v1/models")["data"]}[name]


async def test_bus_restart_loses_no_request_and_signals_resume(tmp_path, llama_server):
    """dbus.service restarts under a stream of requests that need switches: every request is
    served (they wait for the bus, bounded), and afterwards unit signals arrive again."""
    with UserManager() as manager:
        deploy = Deployment(manager, tmp_path, "busfault", llama=llama_server)
        try:
            a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
            b = deploy.scripted_unit("b", {"routes": {"*": {"json": {"from": "b"}}}})
            daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}})
            results: list[tuple[int, object]] = []

            async def client(http) -> None:
                for i in range(30):
                    model = "ab"[i % 2]
                    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(model))
                    results.append((status, body))
                    await asyncio.sleep(0.02)

            async with aiohttp.ClientSession() as http:
                requests = asyncio.create_task(client(http))
                await wait_for_async(lambda: results, 30, what="the first answers")  # the stream is flowing
                await asyncio.to_thread(manager.systemctl, "restart", "dbus.service")
                await requests
            bad = [(s, b) for s, b in results if s != 200]
            assert bad == [], f"{len(bad)} of {len(results)} requests failed: {bad[:3]}\n{daemon.log()}"
            assert "reconnected to the user manager" in daemon.log()

            # signals resumed: a unit stopped behind the switch's back shows at once, no request made
            running = manager.active_units("*-busfault@*")
            assert len(running) == 1
            name = "a" if running[0] == a.unit else "b"
            manager.systemctl("stop", running[0])
            wait_for(lambda: model_state(daemon, name) == "stopped", 5, what=f"{name} shown stopped")
        finally:
            deploy.close()


async def test_unit_stopped_behind_the_switchs_back_is_noticed_without_a_request(deploy, user_manager):
    a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("a"))
    assert status == 200, body
    assert model_state(daemon, "a") == "ready"
    user_manager.systemctl("kill", "--signal=KILL", a.unit)
    t0 = time.monotonic()
    # from systemd's PropertiesChanged signal: no request is sent to find out
    wait_for(lambda: model_state(daemon, "a") == "stopped", 5, interval=0.005, what="a shown stopped")
    print(f"noticed after {(time.monotonic() - t0) * 1000:.0f} ms")
    assert [r for r in daemon.get_json("/running")["running"]] == []
    assert re.search(rf"a: {re.escape(a.unit)} is (deactivating|inactive|failed): stopped outside the switch",
                     daemon.log()), daemon.log()


async def test_unit_failing_on_every_start_backs_off(deploy):
    broken = deploy.command_unit("broken", ["/nonexistent/llama-server"])
    daemon = deploy.up({"broken": {"unit": broken.unit, "url": "http://127.0.0.1:9"}})

    def starts() -> int:
        return len(broken.runs())

    async with aiohttp.ClientSession() as http:
        url = daemon.url + "/v1/chat/completions"
        # the first failure is retried by the next request (the unit may have been fixed)
        for expected_starts in (1, 2):
            status, body, _ = await post_json(http, url, chat_body("broken"))
            assert status == 502 and body["error"]["code"] == "start_failed", body
            assert starts() == expected_starts
        # then a backoff: each request gets the failure at once, nothing is started
        for _ in range(5):
            status, body, _ = await post_json(http, url, chat_body("broken"))
            assert status == 502 and body["error"]["code"] == "start_failed", body
            assert "not started again for" in body["error"]["message"]
            assert "/nonexistent/llama-server" in body["error"]["message"] or "status" in body["error"]["message"]
        assert starts() == 2
        [model] = daemon.get_json("/status")["models"]
        assert model["failures"] == 2 and model["retry_in_s"] > 0
        # an explicit load tries again at once
        status, body, _ = await post_json(http, daemon.url + "/load/broken", {})
        assert status == 502, body
        assert starts() == 3


async def test_unit_stopped_behind_the_switchs_back_is_started_again(deploy, tiny_models,
                                                                      user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("a"))
        assert status == 200, body
        user_manager.systemctl("stop", a.unit)  # the user, not the switch
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("a"))
        assert status == 200, body
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [a.unit]
    assert len(a.runs()) == 2


async def test_failed_model_can_be_fixed_and_used(deploy, tiny_models, user_manager):
    """'failed' is not sticky: after the unit is fixed, the next request starts it."""
    server, env = deploy.llama
    port = free_port()
    unit = f"llama-server-{deploy.tag}@fixme.service"
    deploy.command_unit("fixme", ["/nonexistent/llama-server"], unit=unit)
    daemon = deploy.up({"fixme": {"unit": unit, "url": f"http://127.0.0.1:{port}"}})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("fixme"))
        assert status == 502, body
        assert model_state(daemon, "fixme") == "failed"
        deploy.llama_unit("fixme", tiny_models["a"], port=port, unit=unit)
        deploy.reload()
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                          chat_body("fixme"))
        assert status == 200, body
    assert model_state(daemon, "fixme") == "ready"


async def test_survives_the_user_bus_restarting(tmp_path, llama_server):
    """The bus connection drops (dbus.service restarts); the switch reconnects.
    (Its own user manager: restarting the bus is not something to do to the shared one.)"""
    with UserManager() as manager:
        deploy = Deployment(manager, tmp_path, "bus", llama=llama_server)
        try:
            a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"from": "a"}}}})
            b = deploy.scripted_unit("b", {"routes": {"*": {"json": {"from": "b"}}}})
            daemon = deploy.up({"a": {"unit": a.unit, "url": a.url},
                                "b": {"unit": b.unit, "url": b.url}})
            async with aiohttp.ClientSession() as http:
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                                  chat_body("a"))
                assert (status, body) == (200, {"from": "a"})
                manager.systemctl("restart", "dbus.service")
                wait_for(lambda: manager.systemctl("is-active", "dbus.service", check=False)
                         .stdout.strip() == "active", 30, what="dbus.service back")
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                                  chat_body("b"))
                assert (status, body) == (200, {"from": "b"}), daemon.log()
            assert manager.active_units("*-bus@*") == [b.unit]
        finally:
            deploy.close()
