"""`any_of` virtual models and the checks of `pin` (issue 20; docs/design.md, "Who goes next").

A model entry with `any_of: [a, b, …]` (and optional `aliases`) is a virtual model: its members
name models, their aliases, or other virtual models, which are flattened in order. The choice of
a member is the scheduler's (scheduling/any_of.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from . import values as v
from .types import Model

GROUP_KEYS = {"any_of", "aliases"}


@dataclass(frozen=True)
class AnyOf:
    name: str
    members: tuple[str, ...]  # model names, flattened, in the order listed
    aliases: tuple[str, ...] = ()


def split(raw: dict) -> tuple[dict, dict[str, dict]]:
    """The config with `models:` less its virtual models, and those (name → spec)."""
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict):
        return raw, {}
    groups = {str(n): s for n, s in models_raw.items() if isinstance(s, dict) and "any_of" in s}
    if not groups:
        return raw, {}
    return {**raw, "models": {n: s for n, s in models_raw.items() if str(n) not in groups}}, groups


def parse(groups_raw: dict[str, dict], names: dict[str, str]) -> tuple[dict[str, AnyOf], dict[str, str]]:
    """The virtual models, and each of their names and aliases → the virtual model's name."""
    listed: dict[str, list[str]] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    group_names: dict[str, str] = {}
    for name, spec in groups_raw.items():
        key = f"models.{name}"
        v.reject_unknown(spec, key + ".", GROUP_KEYS)
        members = spec["any_of"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{key}.any_of: must be a list of model names")
        found = spec.get("aliases", [])
        found = [found] if isinstance(found, str) else found
        if not isinstance(found, list) or not all(isinstance(a, str) and a for a in found):
            raise ConfigError(f"{key}.aliases: must be a list of names")
        for n in (name, *found):
            if n in names or n in group_names:
                raise ConfigError(f"{key}: name or alias {n!r} is already used by model "
                                  f"{names.get(n) or group_names[n]!r}")
            group_names[n] = name
        listed[name], aliases[name] = members, tuple(found)
    for name, members in listed.items():
        for i, m in enumerate(members):
            if m not in names and m not in group_names:
                raise ConfigError(f"models.{name}.any_of[{i}]: unknown model {m!r} "
                                  f"(known: {', '.join(sorted(set(names.values())))})")
    groups = {name: AnyOf(name, _flatten(name, listed, names, group_names, ()), aliases[name]) for name in listed}
    return groups, group_names


def _flatten(name: str, listed: dict[str, list[str]], names: dict[str, str], group_names: dict[str, str],
             path: tuple[str, ...]) -> tuple[str, ...]:
    """`name`'s members as model names, in order, each once; a virtual model naming itself,
    directly or through others, is an error."""
    if name in path:
        raise ConfigError(f"models.{path[0]}.any_of: a cycle: {' → '.join((*path, name))}")
    out: list[str] = []
    for m in listed[name]:
        inner = [names[m]] if m in names else _flatten(group_names[m], listed, names, group_names, (*path, name))
        out.extend(x for x in inner if x not in out)
    return tuple(out)


def check_pins(models: dict[str, Model], budget: int | None) -> None:
    """Every model must be able to run beside the pinned ones (docs/design.md, "Who may run together")."""
    pinned = [m for m in models.values() if m.pin]
    if not pinned:
        return
    if budget is None and len(models) > 1:
        raise ConfigError(f"models.{pinned[0].name}.pin: needs memory_budget (without one every model runs alone, "
                          "so no other model could ever start)")
    for m in models.values():
        others = [p for p in pinned if p is not m]
        if not others or budget is None:
            continue
        if clash := next((p for p in others if p.url == m.url), None):
            raise ConfigError(f"models.{m.name}.url: {m.url} is also pinned {clash.name}'s; it could never run")
        if m.memory is None or any(p.memory is None for p in others):
            undeclared = m if m.memory is None else next(p for p in others if p.memory is None)
            if undeclared.memory_auto:
                continue  # learned at its first start (the scheduler warns then)
            raise ConfigError(f"models.{undeclared.name}.memory: needed beside pinned models (a model without "
                              "memory runs alone)")
        used = sum(p.memory for p in others)  # type: ignore[misc]
        if m.memory + used > budget:
            pins = " + ".join(f"pinned {p.name} {v.format_size(p.memory)}" for p in others)
            raise ConfigError(f"models.{m.name}: {v.format_size(m.memory)} + {pins} exceed memory_budget "
                              f"{v.format_size(budget)}")
