"""Errors a client sees, end to end: the switch's own, OpenAI-shaped. (Failures of units and backends
are in faults/test_broken_backends.py.)"""

from __future__ import annotations

import json

import pytest

from support.checks import assert_openai_error
from support.factories import module_deployment
from support.harness import chat_body, post_json


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
