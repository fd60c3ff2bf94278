"""GET /openapi.json: the description matches the routes the app registers, both ways, and holds
together (every $ref resolves, every path parameter is declared)."""

from __future__ import annotations

import re

from llm_switch.backends.llama_server import Backends
from llm_switch.config import parse
from llm_switch.events import EventBus
from llm_switch.http.app import build_app
from llm_switch.http.openapi import describe
from llm_switch.scheduling.memory import Gpu
from llm_switch.scheduling.ports import Parts
from llm_switch.scheduling.scheduler import Scheduler
from llm_switch.units.systemd import Systemd

CONFIG = "listen: 127.0.0.1:3002\nmodels:\n  a: llama-server@a.service\n"
# a route for any method ("*") is described with these
ANY_METHOD = {"get", "post", "put", "patch", "delete", "options"}


def _registered() -> dict[str, set[str]]:
    """{path: methods} of every route the app registers; HEAD is aiohttp's own twin of each GET."""
    routes: dict[str, set[str]] = {}
    events = EventBus()  # the parts are only built, never connected: the routes are what is read
    scheduler = Scheduler(parse(CONFIG), Parts(Systemd(), Backends(), events, Gpu()))
    for route in build_app(events, scheduler).router.routes():
        if route.method == "HEAD":
            continue
        methods = ANY_METHOD if route.method == "*" else {route.method.lower()}
        routes.setdefault(route.resource.canonical, set()).update(methods)
    return routes


def _described() -> dict[str, set[str]]:
    return {path: set(ops) for path, ops in describe()["paths"].items()}


def test_every_route_the_app_registers_is_described():
    described = _described()
    missing = [f"{m.upper()} {path}" for path, methods in _registered().items()
               for m in sorted(methods - described.get(path, set()))]
    assert not missing, "add these to http/openapi.py:\n" + "\n".join(missing)


def test_nothing_is_described_that_the_app_does_not_register():
    registered = _registered()
    stale = [f"{m.upper()} {path}" for path, methods in _described().items()
             for m in sorted(methods - registered.get(path, set()))]
    assert not stale, "http/openapi.py describes routes the app lacks:\n" + "\n".join(stale)


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_description_holds_together():
    doc = describe()
    assert doc["openapi"].startswith("3.1.")
    schemas = doc["components"]["schemas"]
    assert [r for r in _refs(doc) if r.removeprefix("#/components/schemas/") not in schemas] == []
    for path, ops in doc["paths"].items():
        wanted = set(re.findall(r"{(\w+)}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert declared == wanted, f"{method.upper()} {path}: path parameters {declared} != {wanted}"
            assert "200" in op["responses"] and "default" in op["responses"], f"{method.upper()} {path}"


def test_each_dialect_names_its_own_error_shape():
    paths = describe()["paths"]
    error = lambda path, method="post": paths[path][method]["responses"]["default"]["content"][  # noqa: E731
        "application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert error("/v1/{tail}") == "OpenAIError"
    assert error("/v1/messages") == "AnthropicError"
    assert error("/api/chat") == "OllamaError"
    assert error("/status", "get") == "OpenAIError"
