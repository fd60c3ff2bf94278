"""llama-swap's macros as llama-swap reads them: `${env.VAR}` first, then the global and model
`macros` (a later macro may use an earlier one), `${MODEL_ID}`, `${PORT}`; and its matrix set
expressions (`(a | b) & c`, `+ref`). Pure: the environment comes in as a mapping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

ENV_MACRO = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
ANY_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


def expand_env(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """Every `${env.VAR}` in the strings of value; an unset variable is an error, as in llama-swap."""
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            if m[1] not in environ:
                raise ConfigError(f"{where}: ${{env.{m[1]}}}: environment variable {m[1]} is not set "
                                  "(llama-swap would refuse this config too)")
            return environ[m[1]]
        return ENV_MACRO.sub(one, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _one(value: Any, name: str, macro: Any) -> Any:
    slug = "${" + name + "}"
    if isinstance(value, str):
        if value == slug:
            return macro  # a whole-value macro keeps its type (a number stays a number)
        return value.replace(slug, str(macro).lower() if isinstance(macro, bool) else str(macro))
    if isinstance(value, dict):
        return {k: _one(v, name, macro) for k, v in value.items()}
    if isinstance(value, list):
        return [_one(v, name, macro) for v in value]
    return value


def substitute(value: Any, macros: list[tuple[str, Any]]) -> Any:
    """llama-swap's order: the last macro first, so a macro may use those declared before it."""
    for name, macro in reversed(macros):
        value = _one(value, name, macro)
    return value


def macro_list(value: Any, where: str) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of macro names to values")
    out = []
    for name, macro in value.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", str(name)) or name in ("PID", "PORT", "MODEL_ID"):
            raise ConfigError(f"{where}.{name}: not a macro name llama-swap accepts")
        out.append((str(name), macro.strip() if isinstance(macro, str) else macro))
    return out


def merged(model_id: str, global_macros: list[tuple[str, Any]], own: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """MODEL_ID, the global macros, the model's own in their place (overriding) or after."""
    out = [("MODEL_ID", model_id), *global_macros]
    for name, value in own:
        at = next((i for i, (n, _) in enumerate(out) if n == name), None)
        if at is None:
            out.append((name, value))
        else:
            out[at] = (name, value)
    return out


def leftover(value: Any) -> list[str]:
    """Macros still unresolved in value."""
    if isinstance(value, str):
        return ANY_MACRO.findall(value)
    if isinstance(value, dict):
        return [m for v in value.values() for m in leftover(v)]
    if isinstance(value, list):
        return [m for v in value for m in leftover(v)]
    return []


# -- matrix sets ---------------------------------------------------------------------------------

def set_slots(dsl: str, sets: Mapping[str, str], names: Mapping[str, str], depth: int = 0) -> list[list[str]] | None:
    """A set written as an AND of alternatives (`(a | b) & c`) as its slots ([[a, b], [c]]): at most
    one model of a slot runs at a time. None where the expression has another shape."""
    if depth > 16:
        raise ConfigError(f"matrix set {dsl!r}: +references nest too deeply")
    slots: list[list[str]] = []
    for term in _split_top(dsl, "&"):
        term = term.strip()
        if term.startswith("(") and term.endswith(")") and _balanced(term[1:-1]):
            term = term[1:-1]
        if term.startswith("+") and "|" not in term:
            ref = term[1:].strip()
            if ref not in sets:
                raise ConfigError(f"matrix set {dsl!r}: +{ref} names no set")
            inner = set_slots(sets[ref], sets, names, depth + 1)
            if inner is None:
                return None
            slots += inner
            continue
        choices = [c.strip() for c in term.split("|")]
        if not all(re.fullmatch(r"[A-Za-z0-9_.:/@-]+", c) for c in choices):
            return None
        slots.append([names.get(c, c) for c in choices])
    return slots


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c == "("
        depth -= c == ")"
        if c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _balanced(text: str) -> bool:
    depth = 0
    for c in text:
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            return False
    return depth == 0
