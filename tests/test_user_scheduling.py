"""Issue 20 end to end: a pinned model, `any_of`, priorities and a load nobody waits for. Real
systemd --user, real llama-server and scripted units, the daemon as users run it; systemd's own
view is the judge of what runs."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml

from support.harness import UnitSampler, chat_body, post_json, wait_for, wait_for_async

M = 1 << 20
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}}]}


def states(daemon) -> dict[str, str]:
    return {m["model"]: m["state"] for m in daemon.get_json("/status")["models"]}


async def test_a_pinned_model_stays_up_while_three_chat_models_swap(deploy, tiny_models, user_manager):
    chats = {name: deploy.llama_unit(name, tiny_models["a" if i % 2 else "b"])
             for i, name in enumerate(("coder", "thinker", "writer"))}
    embed = deploy.llama_unit("embed", tiny_models["a"], extra_args=["--embeddings", "--pooling", "mean"])
    models = {name: {"unit": u.unit, "url": u.url, "memory": "400M"} for name, u in chats.items()}
    models["embed"] = {"unit": embed.unit, "url": embed.url, "memory": "100M", "pin": True}
    daemon = deploy.up(models, memory_budget="600M", health_timeout=120)
    wait_for(lambda: states(daemon)["embed"] == "ready", 60, what="the pinned model to start with the switch")
    sizes = {**{u.unit: 400 * M for u in chats.values()}, embed.unit: 100 * M}
    async with aiohttp.ClientSession() as http:
        with UnitSampler(user_manager, f"llama-server-{deploy.tag}@*") as sampler:
            for chat in ("coder", "thinker", "writer", "coder", "writer"):
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(chat))
                assert status == 200, body
                active = set(user_manager.active_units(f"llama-server-{deploy.tag}@*"))
                assert active == {embed.unit, chats[chat].unit}, active
        over = [(t, units) for t, units in sampler.samples if sum(sizes[u] for u in units) > 600 * M]
        assert sampler.samples and over == [], f"the running set broke the budget: {over[:3]}"
        assert embed.unit in set.intersection(*(set(units) for _, units in sampler.samples))  # up throughout
        assert len(embed.runs()) == 1 and embed.runs()[0][1] == float("inf")
        assert next(m for m in daemon.get_json("/status")["models"] if m["model"] == "embed")["pin"] is True
        # an explicit unload still stops it
        status, body, _ = await post_json(http, daemon.url + "/unload/embed", {})
        assert status == 200, body
    assert embed.unit not in user_manager.active_units(f"llama-server-{deploy.tag}@*")
    assert states(daemon)["embed"] == "stopped"


async def test_a_high_priority_request_starts_its_model_once_the_low_one_drains(deploy, user_manager):
    """The low model is busy inside a 10-minute min_loaded window; max_wait is 2 minutes, so a
    high request that waited for the window would get a 503."""
    low = deploy.scripted_unit("low", {"routes": {"/v1/chat/completions": {"delay": 3, "json": ANSWER}}})
    high = deploy.scripted_unit("high", {"routes": {"/v1/chat/completions": {"json": ANSWER}}})
    daemon = deploy.up({"low": {"unit": low.unit, "url": low.url, "min_loaded": "10m"},
                        "high": {"unit": high.unit, "url": high.url, "priority": 1}}, max_wait="2m")
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(post_json(http, daemon.url + "/v1/chat/completions", chat_body("low")))
        await wait_for_async(lambda: low.records("request"), 30, what="the low request at its backend")
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("high"))
        assert status == 200, body
        status, body, _ = await busy
        assert status == 200 and body["choices"][0]["message"]["content"] == "done"  # drained, never cut
    assert len(high.records("request")) == 1
    assert deploy.overlapping_runs([low, high]) == []
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [high.unit]


async def test_a_load_nobody_waits_for_gives_way(deploy, user_manager):
    """The client of a slow load leaves while another model's request waits: the load is
    abandoned, its unit stopped, and the waiting model starts at once (not after the load)."""
    slow = deploy.scripted_unit("slow", {"health": {"ok_after": 600}})
    other = deploy.scripted_unit("other", {"routes": {"/v1/chat/completions": {"json": ANSWER}}})
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url, "health_timeout": 900},
                        "other": {"unit": other.unit, "url": other.url}}, max_wait="10m")
    async with aiohttp.ClientSession() as leaving, aiohttp.ClientSession() as http:
        gone = asyncio.create_task(post_json(leaving, daemon.url + "/v1/chat/completions", chat_body("slow")))
        await wait_for_async(lambda: slow.records("health"), 30, what="the slow model to load")
        waiting = asyncio.create_task(post_json(http, daemon.url + "/v1/chat/completions", chat_body("other")))
        await wait_for_async(lambda: daemon.get_json("/status")["models"][1]["waiting"] == 1, 30,
                             what="the request for other to wait")
        gone.cancel()  # the client leaves: its connection closes
        await leaving.close()
        status, body, _ = await asyncio.wait_for(waiting, 120)  # the load itself would take 600 s
        assert status == 200, body
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [other.unit]
    assert len(slow.runs()) == 1 and slow.runs()[0][1] != float("inf")  # stopped
    assert deploy.overlapping_runs([slow, other]) == []
    wait_for(lambda: "slow: load abandoned: its clients left, and a request for other waits for the memory"
             in daemon.log(), 10, what="the log line of the abandoned load")


async def test_any_of_is_served_by_the_loaded_coder_with_no_start(deploy, tiny_models, user_manager):
    coder = deploy.llama_unit("coder", tiny_models["a"])
    other = deploy.llama_unit("other-coder", tiny_models["b"])
    daemon = deploy.up({"coder": {"unit": coder.unit, "url": coder.url},
                        "other-coder": {"unit": other.unit, "url": other.url},
                        "either": {"any_of": ["other-coder", "coder"], "aliases": ["any-coder"]}}, health_timeout=120)
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body("coder"))
        assert status == 200, body
        for name in ("either", "any-coder"):
            status, body, resp = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(name))
            assert status == 200, body
            assert (body["model"], resp.headers["X-LLM-Switch-Model"]) == ("coder", "coder")
        listed = {m["id"]: m for m in daemon.get_json("/v1/models")["data"]}
        assert listed["either"]["any_of"] == ["other-coder", "coder"] and listed["either"]["aliases"] == ["any-coder"]
        assert "either" in {m["name"] for m in daemon.get_json("/api/tags")["models"]}
    made = deploy.cli("litellm-config", "--host", daemon.url)
    assert made.returncode == 0, made.stderr
    litellm = {m["model_name"]: m["litellm_params"]["model"] for m in yaml.safe_load(made.stdout)["model_list"]}
    assert (litellm["either"], litellm["any-coder"]) == ("openai/either", "openai/any-coder")
    assert other.runs() == []  # never started
    assert len(coder.runs()) == 1
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [coder.unit]


async def test_a_model_pinned_by_a_reload_starts_at_once(deploy, user_manager):
    embed = deploy.scripted_unit("embed", {})
    models = {"embed": {"unit": embed.unit, "url": embed.url, "memory": "100M"}}
    daemon = deploy.up(models, memory_budget="600M")
    assert states(daemon)["embed"] == "stopped"
    models["embed"]["pin"] = True
    deploy.write_config(models, memory_budget="600M", listen=daemon.url.removeprefix("http://"))
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post_json(http, daemon.url + "/reload", {})
    assert status == 200, body
    wait_for(lambda: states(daemon)["embed"] == "ready", 60, what="the newly pinned model to start")
    assert user_manager.active_units(f"*-{deploy.tag}@*") == [embed.unit]
