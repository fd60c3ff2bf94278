"""Seeing what the switch does: /metrics (read with prometheus_client's own parser, the values
checked against what the test did; its labels bounded whatever clients send), a model's log
(`GET /logs/{model}`, `llm-switch logs`), the load phase from the journal in the loading progress.
The pure parts are in test_metrics_pure.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import harness
from support.harness import chat_body, free_port, post_json, sse_lines
from llm_switch.units.journal import load_phase
from support.answers import TIMINGS, USAGE, answer, whole_answer
from support.units import journaled_scripted


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus_client: {(sample name, sorted labels): value}."""
    status, body = harness.http_get(url + "/metrics")
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_match_what_the_test_did(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"json": whole_answer()}}})
    b = deploy.scripted_unit("b", {"routes": {"/v1/chat/completions": {"sse": answer()}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url, "memory": "1G"},
                        "b": {"unit": b.unit, "url": b.url, "memory": "2G"}}, min_loaded=0.01)
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    broken_history = hi + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{'path': 'x',}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    for messages in (hi, hi, broken_history):
        client.chat.completions.create(model="a", messages=messages)
    assert "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="b", messages=hi, stream=True) if c.choices) == "Hello world"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=hi)

    m = scrape(daemon.url)
    chat = "/v1/chat/completions"
    assert value(m, "llm_switch_requests_total", model="a", route=chat, status="200") == 3
    assert value(m, "llm_switch_requests_total", model="b", route=chat, status="200") == 1
    # an unknown model: no model label; the route is the endpoint, never the name asked for
    assert value(m, "llm_switch_requests_total", model="", route=chat, status="404") == 1
    assert value(m, "llm_switch_prompt_tokens_total", model="a") == 3 * USAGE["prompt_tokens"]
    assert value(m, "llm_switch_completion_tokens_total", model="a") == 3 * USAGE["completion_tokens"]
    assert value(m, "llm_switch_completion_tokens_total", model="b") == USAGE["completion_tokens"]
    assert value(m, "llm_switch_prompt_seconds_total", model="a") == pytest.approx(3 * TIMINGS["prompt_ms"] / 1000)
    assert value(m, "llm_switch_generation_seconds_total", model="b") == pytest.approx(TIMINGS["predicted_ms"] / 1000)
    assert value(m, "llm_switch_generation_tokens_per_second", model="b") == TIMINGS["predicted_per_second"]
    assert value(m, "llm_switch_prompt_tokens_per_second", model="a") == TIMINGS["prompt_per_second"]
    assert value(m, "llm_switch_tool_calls_repaired_total", model="a") == 1
    assert value(m, "llm_switch_request_duration_seconds_count", model="a") == 3
    assert value(m, "llm_switch_time_to_first_byte_seconds_count", model="a") == 3
    assert value(m, "llm_switch_time_to_first_byte_seconds_count", model="b") == 1
    # two loads (a, then b), each its own switch; b's stopped a first
    assert value(m, "llm_switch_switch_duration_seconds_count", model="a", result="ok") == 1
    assert value(m, "llm_switch_switch_duration_seconds_count", model="b", result="ok") == 1
    status = {s["model"]: s for s in daemon.get_json("/status")["models"]}
    assert value(m, "llm_switch_load_duration_seconds_sum", model="b") == pytest.approx(status["b"]["load_s"], abs=0.002)
    assert value(m, "llm_switch_model_last_load_seconds", model="b") == pytest.approx(status["b"]["load_s"], abs=0.002)
    assert value(m, "llm_switch_wait_seconds_count", model="b") == 1  # it waited for its load
    assert value(m, "llm_switch_model_state", model="b", state="ready") == 1
    assert value(m, "llm_switch_model_state", model="a", state="stopped") == 1
    assert value(m, "llm_switch_model_state", model="a", state="ready") == 0
    assert value(m, "llm_switch_model_memory_bytes", model="a", kind="declared") == 1 << 30
    assert value(m, "llm_switch_model_memory_bytes", model="b", kind="ram") == status["b"]["memory"]["measured_ram"]
    assert value(m, "llm_switch_requests_in_flight", model="b") == 0
    assert value(m, "llm_switch_requests_queued", model="b") == 0
    # the per-answer log line
    assert "a: 11 prompt + 3 completion tokens, prompt 500.0 tok/s, generation 50.0 tok/s" in daemon.log()


async def test_metrics_count_requests_in_flight_and_queued(deploy):
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"delay": 5.0, "json": whole_answer()}}})
    b = deploy.scripted_unit("b", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}}, min_loaded="1m")

    async def seen(what: str, **labels: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = await asyncio.to_thread(scrape, daemon.url)
            if value(m, what, **labels) == 1:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"never saw {what} {labels} at 1: {m}")

    async with aiohttp.ClientSession() as http:
        slow = asyncio.ensure_future(http.post(daemon.url + "/v1/chat/completions", json=chat_body("a")))
        await seen("llm_switch_requests_in_flight", model="a")  # b only once a runs: b must wait behind it
        other = asyncio.ensure_future(http.post(daemon.url + "/v1/embeddings", json={"model": "b", "input": "x"}))
        await seen("llm_switch_requests_queued", model="b")
        for task in (slow, other):
            (await task).release()


async def test_prompt_cache_transfers_are_counted(deploy, tiny_models, tmp_path):
    """Regression: llm_switch_prompt_cache_transfers was always empty (it read counts the cache
    did not keep). A real llama-server saves a's slot when b is asked for, and restores it after."""
    slots = tmp_path / "slots"
    (slots / "a").mkdir(parents=True)
    a = deploy.llama_unit("a", tiny_models["a"], extra_args=["--slot-save-path", str(slots / "a")])
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       prompt_cache_dir=str(slots), prompt_cache_min_tokens=16)
    async with aiohttp.ClientSession() as http:
        for name in ("a", "b", "a"):
            status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                              chat_body(name, "a prompt long enough to be saved " * 3, max_tokens=2))
            assert status == 200, body
    m = await asyncio.to_thread(scrape, daemon.url)
    for action in ("save", "restore"):
        assert value(m, "llm_switch_prompt_cache_transfers_total", model="a", action=action) == 1, action
        assert value(m, "llm_switch_prompt_cache_seconds_total", model="a", action=action) > 0, action
        assert value(m, "llm_switch_prompt_cache_last_tokens", model="a", action=action) >= 16, action
    assert value(m, "llm_switch_prompt_cache_transfers_total", model="b", action="save") == 0


ADMIN = "admin-5d0c1e9a7f2b44e1"
LIMITED = "limited-8a2e4c6f0b1d3957"  # may use model a only


def made_up_requests(i: int) -> list[tuple[str, str, dict, dict | None]]:
    """(method, path, headers, JSON body) of requests whose paths, model names or keys a client
    made up: unmatched paths with no key, with a model-limited key (403) and with the admin key,
    paths under the model routes, unknown models, and a model the limited key may not use."""
    admin, limited = {"Authorization": f"Bearer {ADMIN}"}, {"Authorization": f"Bearer {LIMITED}"}
    return [("GET", f"/made-up/{i}", {}, None),
            ("GET", f"/made-up/{i}?x={i}", limited, None),
            ("POST", f"/admin-{i}", admin, {}),
            ("GET", f"/logs/made-up-{i}", limited, None),
            ("POST", f"/load/made-up-{i}", limited, None),
            ("POST", f"/v1/made-up-{i}", limited, {"model": f"made-up-{i}"}),
            ("POST", "/v1/chat/completions", limited, {"model": f"made-up-{i}", "messages": []}),
            ("POST", "/v1/chat/completions", limited, {"model": "b", "messages": []}),
            ("GET", f"/upstream/made-up-{i}/x/{i}", admin, None)]


async def test_made_up_paths_add_no_metric_series(deploy):
    """2000 requests on made-up paths (403s under api_keys among them) add no series to /metrics:
    the route label is the matched route's pattern or `other`, the model one configured or none."""
    a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"ok": True}}}})
    b = deploy.scripted_unit("b", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       api_keys=[{"key": ADMIN, "name": "admin"}, {"key": LIMITED, "name": "limited", "models": ["a"]}],
                       metrics_public=True)
    statuses: set[int] = set()
    limit = asyncio.Semaphore(16)

    async def send(http: aiohttp.ClientSession, method: str, path: str, headers: dict, body: dict | None) -> None:
        async with limit, http.request(method, daemon.url + path, headers=headers, json=body) as resp:
            await resp.read()
            statuses.add(resp.status)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(send(http, *r) for r in made_up_requests(0)))  # each kind's series, once
        await asyncio.to_thread(scrape, daemon.url)  # and the scrape's own
        before = await asyncio.to_thread(scrape, daemon.url)
        requests = [r for i in range(1, 2000 // len(made_up_requests(0)) + 2) for r in made_up_requests(i)][:2000]
        await asyncio.gather(*(send(http, *r) for r in requests))
    after = await asyncio.to_thread(scrape, daemon.url)
    assert {401, 403, 404}.issubset(statuses), statuses
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    routes = {dict(labels)["route"] for name, labels in after if name == "llm_switch_requests_total"}
    assert "other" in routes and not any("made-up" in r for r in routes), routes
    assert value(after, "llm_switch_requests_total", model="", route="other", status="403") > 200


async def test_logs_and_the_load_phase_come_from_the_journal(journal_manager, tmp_path, llama_server):
    """`llm-switch logs MODEL` prints the unit's journal lines, `-f` follows them; while a model
    loads, a streamed request is told the phase llama-server logged."""
    d = harness.Deployment(journal_manager, tmp_path, "logs", llama=llama_server)
    try:
        a = journaled_scripted(d, "a", {})
        port = free_port()
        script = tmp_path / "slow.json"
        script.write_text(json.dumps({"model": "slow", "health": {"ok_after": 2.5},
                                      "routes": {"/v1/chat/completions": {"sse": answer()}}}))
        slow = d.command_unit("slow", ["/bin/sh", "-c",
                                       "echo 'llama_model_loader: loaded meta data'; "
                                       "echo 'load_tensors: offloaded 3/10 layers to GPU'; "
                                       "echo 'load_tensors: loading model tensors, this can take a while'; "
                                       f"exec {sys.executable} {harness.SCRIPTED_BACKEND} --port {port} --script {script}"],
                              port=port, to_journal=True)
        d.write_config({"a": {"unit": a.unit, "url": a.url}, "slow": {"unit": slow.unit, "url": slow.url}})
        daemon = d.start(namespace_pid=journal_manager.namespace_pid)
        env = {"LLM_SWITCH_CONFIG": str(d.dir / "config.yaml")}

        done = harness.run_cli(["load", "a", "--url", daemon.url], env)
        assert done.returncode == 0 and done.stdout.startswith("a: ready, loaded in"), done
        done = harness.run_cli(["logs", "a", "--url", daemon.url], env)
        assert done.returncode == 0, done
        assert "zz-a starting on port" in done.stdout, done.stdout
        assert harness.run_cli(["logs", "nope", "--url", daemon.url], env).returncode == 1

        follow = subprocess.Popen([sys.executable, "-m", "llm_switch", "logs", "a", "-f", "--url", daemon.url],
                                  stdout=subprocess.PIPE, text=True, env={**journal_manager.client_env(), **env})
        try:
            assert "zz-a starting" in follow.stdout.readline()
            done = harness.run_cli(["unload", "a", "--url", daemon.url], env)
            assert done.stdout.strip() == "unloaded a", done
            harness.run_cli(["load", "a", "--url", daemon.url], env)
            deadline = time.monotonic() + 30
            while "zz-a starting" not in (line := follow.stdout.readline()):  # the second start, live
                assert line and time.monotonic() < deadline, "no second start line"
        finally:
            follow.terminate()
            follow.wait(timeout=10)

        async with aiohttp.ClientSession() as http:
            async with http.post(daemon.url + "/v1/chat/completions", json=chat_body("slow", stream=True)) as resp:
                lines = [line async for _, line in sse_lines(resp)]
        reasoning = "".join(json.loads(line[6:])["choices"][0]["delta"].get("reasoning_content") or ""
                            for line in lines if line.startswith("data: {"))
        assert "loading slow: loading tensors (3/10 layers on the GPU)" in reasoning, reasoning
    finally:
        d.close()


@pytest.mark.unit
@pytest.mark.parametrize("lines,phase", [
    ([], None),
    (["main: build info"], None),
    (["llama_model_loader: loaded meta data with 30 key-value pairs"], "reading the model file"),
    (["llama_model_loader: x", "load_tensors: offloaded 33/49 layers to GPU", "load_tensors: CPU_Mapped model buffer"],
     "loading tensors (33/49 layers on the GPU)"),
    (["load_tensors: x", "llama_context: n_ctx = 4096", "llama_kv_cache: size = 256 MiB"], "allocating the KV cache"),
    (["load_tensors: x", "common_init_from_params: warming up the model with an empty run - please wait"], "warming up"),
    (["common_init_from_params: warming up the model", "main: server is listening on http://127.0.0.1:3004"],
     "model loaded"),
])
def test_load_phase_from_llama_server_lines(lines, phase):
    assert load_phase(lines) == phase
