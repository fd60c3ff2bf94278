"""The config of issue 20: `pin`, `priority` and `any_of` virtual models, and their errors."""

from __future__ import annotations

import pytest

from llm_switch.config import parse
from llm_switch.errors import ConfigError

pytestmark = pytest.mark.unit

BASE = """
memory_budget: 8G
models:
  bge-m3: {unit: bge.service, url: "http://127.0.0.1:4001", memory: 1.2G, pin: true}
  coder: {unit: coder.service, url: "http://127.0.0.1:4002", memory: 6.5G, priority: 2}
  big: {unit: big.service, url: "http://127.0.0.1:4003", memory: 6G, aliases: [big-alias]}
"""


def test_pin_priority_and_any_of():
    c = parse(BASE + """
  either: {any_of: [big-alias, inner], aliases: [whichever]}
  inner: {any_of: [coder, bge-m3, big]}
""")
    assert c.pinned == ("bge-m3",)
    assert (c.models["coder"].priority, c.models["big"].priority, c.models["big"].pin) == (2, 0, False)
    assert c.group("whichever").members == ("big", "coder", "bge-m3")  # flattened, each once, in order
    assert c.group("inner").name == "inner"
    assert c.group("coder") is None and c.resolve("either") is None


@pytest.mark.parametrize("text, message", [
    (BASE.replace("memory: 6G", "memory: 7.5G"),
     r"models.big: 7.5G \+ pinned bge-m3 1.2G exceed memory_budget 8G"),
    (BASE + "  x: {any_of: [coder, nope]}\n", r"models.x.any_of\[1\]: unknown model 'nope'"),
    (BASE + "  x: {any_of: [y]}\n  y: {any_of: [coder, x]}\n", "models.x.any_of: a cycle: x → y → x"),
    (BASE + "  x: {any_of: [x]}\n", "a cycle: x → x"),
    (BASE + "  x: {any_of: []}\n", "models.x.any_of: must be a list of model names"),
    (BASE + "  x: {any_of: [coder], unit: x.service}\n", "models.x.unit: unknown key"),
    (BASE + "  big-alias: {any_of: [coder]}\n", "name or alias 'big-alias' is already used by model 'big'"),
    (BASE.replace("priority: 2", "priority: high"), "models.coder.priority: must be an integer"),
    (BASE.replace("pin: true", "pin: yes please"), "models.bge-m3.pin: must be true or false"),
    (BASE.replace("memory_budget: 8G", ""), "models.bge-m3.pin: needs memory_budget"),
    (BASE.replace('"http://127.0.0.1:4003"', '"http://127.0.0.1:4001"'), "is also pinned bge-m3's"),
], ids=["never-fits-beside-pinned", "unknown-member", "cycle", "self", "empty", "unknown-key", "name-taken",
        "priority-type", "pin-type", "pin-without-budget", "pin-shares-url"])
def test_errors_name_both_sides(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)
