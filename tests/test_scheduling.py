"""The scheduler end to end: a memory budget, collation, max_wait, idle unload, preload, measured
memory. Real systemd --user, real llama-server units, the daemon as users run it; systemd's own
view is the judge of what runs."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from support.harness import UnitSampler, chat_body, post_json, wait_for

M = 1 << 20


def embed_body(model: str, n: int = 4) -> dict:
    return {"model": model, "input": [f"text number {i}" for i in range(n)]}


async def test_embedding_model_stays_up_while_two_chat_models_swap(deploy, tiny_models, user_manager):
    """coder + embed fit the budget, coder + thinker do not: the chat models swap, embed stays."""
    coder = deploy.llama_unit("coder", tiny_models["a"])
    thinker = deploy.llama_unit("thinker", tiny_models["b"])
    embed = deploy.llama_unit("embed", tiny_models["a"], extra_args=["--embeddings", "--pooling", "mean"])
    daemon = deploy.up({"coder": {"unit": coder.unit, "url": coder.url, "memory": "400M"},
                        "thinker": {"unit": thinker.unit, "url": thinker.url, "memory": "400M"},
                        "embed": {"unit": embed.unit, "url": embed.url, "memory": "100M"}},
                       memory_budget="600M", health_timeout=120)
    sizes = {coder.unit: 400 * M, thinker.unit: 400 * M, embed.unit: 100 * M}
    async with aiohttp.ClientSession() as http:
        with UnitSampler(user_manager, f"llama-server-{deploy.tag}@*") as sampler:
            for chat in ("coder", "thinker", "coder", "thinker", "coder"):
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(chat))
                assert status == 200, body
                status, body, _ = await post_json(http, daemon.url + "/v1/embeddings", embed_body("embed"))
                assert status == 200, body
                assert len(body["data"]) == 4
                active = set(user_manager.active_units(f"llama-server-{deploy.tag}@*"))
                assert active == {embed.unit, coder.unit if chat == "coder" else thinker.unit}, active
    assert sampler.samples
    over = [(t, units) for t, units in sampler.samples if sum(sizes[u] for u in units) > 600 * M]
    assert over == [], f"the running set broke the budget: {over[:3]}"
    # the embedding model was started once and never stopped; the chat models swapped each turn
    assert len(embed.runs()) == 1 and embed.runs()[0][1] == float("inf")
    assert (len(coder.runs()), len(thinker.runs())) == (3, 2)
    assert deploy.overlapping_runs([coder, thinker]) == []
    assert re.search(r"switch → embed: embed ready in \d+\.\d+ s \(beside coder\)", daemon.log()), daemon.log()


async def test_two_clients_on_two_models_do_not_thrash(deploy, tiny_models, user_manager):
    """A,B,A,B from two concurrent clients: at most 2 loads per min_loaded window, not one per request."""
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    window = 2.0
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       min_loaded=window, health_timeout=120)
    answers = {"a": 0, "b": 0}
    run_for = 3 * window

    async def client(http, model: str) -> None:
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                              chat_body(model, max_tokens=2))
            assert status == 200, body
            answers[model] += 1

    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        await asyncio.gather(client(http, "a"), client(http, "b"))
        took = time.monotonic() - t0
    loads = len(a.runs()) + len(b.runs())
    windows = took / window + 1
    assert loads <= 2 * windows, f"{loads} loads in {took:.1f} s ({answers} answers): thrashing"
    assert answers["a"] >= 1 and answers["b"] >= 1
    assert sum(answers.values()) > loads, f"{answers} answers for {loads} loads: one load per request"
    assert deploy.overlapping_runs([a, b]) == []


async def test_request_past_max_wait_gets_503_with_retry_after(deploy, user_manager):
    slow = deploy.scripted_unit("slow", {"routes": {"/v1/chat/completions": {
        "delay": 4, "json": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "late"}}]}}}})
    other = deploy.scripted_unit("other", {})
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url, "min_loaded": "1m"},
                        "other": {"unit": other.unit, "url": other.url}}, max_wait="1s")
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(post_json(http, daemon.url + "/v1/chat/completions", chat_body("slow")))
        async with asyncio.timeout(30):  # the slow request has reached the backend
            while not slow.records("request"):
                await asyncio.sleep(0.05)
        t0 = time.monotonic()
        status, body, resp = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("other"))
        waited = time.monotonic() - t0
        assert status == 503, body
        assert body["error"]["code"] == "queue_timeout" and "max_wait" in body["error"]["message"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert waited < 4, "the request waited past max_wait"
        status, body, _ = await busy
        assert status == 200 and body["choices"][0]["message"]["content"] == "late"
    assert other.records("request") == []  # it was never switched to
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [slow.unit]


async def test_idle_unload_stops_an_idle_model(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url, "idle_unload": "1s"}})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("a"))
    assert status == 200, body
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [a.unit]
    wait_for(lambda: user_manager.active_units(f"*-{deploy.tag}@*") == [], 30, what=f"{a.unit} to be unloaded")
    assert {m["model"]: m["state"] for m in daemon.get_json("/status")["models"]} == {"a": "stopped"}
    wait_for(lambda: "unloaded a: idle longer than idle_unload" in daemon.log(), 10, what="the unload's log line")


async def test_preload_starts_a_model_without_a_request(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       preload=["b"])
    wait_for(lambda: user_manager.active_units(f"*-{deploy.tag}@*") == [b.unit], 60, what="b preloaded")
    wait_for(lambda: {m["model"]: m["state"] for m in daemon.get_json("/status")["models"]}["b"] == "ready",
             30, what="b ready")
    # the preload task logs once its load returned, a moment after the state turned ready
    wait_for(lambda: "b: preloaded" in daemon.log(), 30, what="the preload's log line")


async def test_measured_memory_shows_in_status_and_the_log(deploy, tiny_models, user_manager):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url, "memory": "1K"}})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/load/a", {})
    assert status == 200, body
    assert body["model"]["state"] == "ready"
    report = daemon.get_json("/status")
    [model] = report["models"]
    assert model["memory"]["declared"] == 1024
    measured = model["memory"]["measured_ram"]
    # systemd's MemoryCurrent where the manager accounts memory, else the main process's RSS
    assert 1 << 20 < measured < 4 << 30, measured
    assert model["memory"]["measured_vram"] is None and "VRAM not measured" in report["vram_note"]
    log = daemon.log()
    assert re.search(r"switch → a: a ready in \d+\.\d+ s; memory 1K declared, [\d.]+[KMG] RAM measured", log), log
    assert "a: measured memory exceeds the declared" in log
    # llm-switch status shows declared against measured
    out = deploy.cli("status", "--url", daemon.url).stdout
    assert re.search(r"a\s+ready.*memory 1K declared, [\d.]+[KMG] RAM measured", out), out
