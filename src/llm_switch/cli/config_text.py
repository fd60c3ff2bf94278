"""Adding and removing one model in config.yaml as text, so the user's comments and layout stay as
they are. Each edit is checked by reading the result back: it must be the old config with exactly
that model added or gone, else the edit is refused and nothing is written."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from ..errors import ConfigError

_TOP_KEY = re.compile(r"^[^\s#]")


def _lines_of_models(lines: list[str]) -> tuple[int, int]:
    """(index of the `models:` line, index after the last line of its block)."""
    start = next((i for i, ln in enumerate(lines) if re.match(r"^models\s*:", ln)), None)
    if start is None:
        raise ConfigError("config has no top-level `models:` block to add to")
    rest = lines[start].split(":", 1)[1].split("#", 1)[0].strip()
    if rest:
        raise ConfigError(f"models: is written on one line ({rest[:40]}…); write it as a block to use add")
    end = start + 1
    last = start + 1
    while end < len(lines) and not _TOP_KEY.match(lines[end]):
        if lines[end].strip() and not lines[end].lstrip().startswith("#"):
            last = end + 1
        end += 1
    return start, last


def _indent(lines: list[str], start: int, end: int) -> str:
    for ln in lines[start + 1:end]:
        if ln.strip() and not ln.lstrip().startswith("#"):
            return ln[:len(ln) - len(ln.lstrip())]
    return "  "


def entry_lines(name: str, spec: dict[str, Any], indent: str) -> list[str]:
    """The model's lines: `NAME: unit` when the unit is all it has, else a block."""
    if list(spec) == ["unit"]:
        return [f"{indent}{name}: {spec['unit']}"]
    out = [f"{indent}{name}:"]
    for key, value in spec.items():
        text = "[" + ", ".join(map(_scalar, value)) + "]" if isinstance(value, list) else _scalar(value)
        out.append(f"{indent}  {key}: {text}")
    return out


def _scalar(value: Any) -> str:
    """Plain where YAML reads it back as the same value, else JSON's quoted form (valid YAML)."""
    text = str(value)
    try:
        if yaml.safe_load(text) == value and "#" not in text and "," not in text:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def add_model(text: str, name: str, spec: dict[str, Any], note: str) -> str:
    lines = text.splitlines()
    start, end = _lines_of_models(lines)
    new_lines = entry_lines(name, spec, _indent(lines, start, end))
    new_lines[0] += f"  # {note}"
    out = "\n".join(lines[:end] + new_lines + lines[end:]) + "\n"
    _same_but(text, out, name, spec)
    return out


def remove_model(text: str, name: str) -> str:
    lines = text.splitlines()
    start, end = _lines_of_models(lines)
    indent = _indent(lines, start, end)
    key = re.compile(rf"^{re.escape(indent)}(['\"]?){re.escape(name)}\1\s*:")
    at = next((i for i in range(start + 1, end) if key.match(lines[i])), None)
    if at is None:
        raise ConfigError(f"models.{name}: not found in config.yaml")
    stop = at + 1
    while stop < end and (not lines[stop].strip() or len(lines[stop]) - len(lines[stop].lstrip()) > len(indent)):
        stop += 1
    while stop > at + 1 and not lines[stop - 1].strip():
        stop -= 1  # blank lines after the entry belong to what follows
    out = "\n".join(lines[:at] + lines[stop:]) + "\n"
    _same_but(text, out, name, None)
    return out


def _same_but(old: str, new: str, name: str, spec: dict[str, Any] | None) -> None:
    """new must read as old with models.NAME set to spec (or gone, for None)."""
    try:
        before, after = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config.yaml: the edit would not be valid YAML ({e}); edit it by hand") from None
    models = dict(before.get("models") or {})
    if spec is None:
        models.pop(name, None)
    else:
        models[name] = spec["unit"] if list(spec) == ["unit"] else spec
    expected = {**before, "models": models}
    if after != expected:
        raise ConfigError("config.yaml: its layout is not one add can edit safely (the result read back "
                          f"differs); add models.{name} by hand")
