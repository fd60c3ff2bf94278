"""The part of JSON Schema (draft 7) that config.schema.json uses, to check values against it
without a dependency. Returns the problems found, as `path: what`; none when the value fits."""

from __future__ import annotations

import re
from typing import Any

_TYPES = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # False is no 0 in JSON


def problems(schema: dict, value: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    kinds = schema.get("type")
    if kinds and not any(_TYPES[k](value) for k in ([kinds] if isinstance(kinds, str) else kinds)):
        return [f"{path}: not of type {kinds}"]
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        out.append(f"{path}: not one of {schema['enum']}")
    if "const" in schema and not _same(value, schema["const"]):
        out.append(f"{path}: not {schema['const']!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            out.append(f"{path}: too short")
    if _TYPES["number"](value):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            out.append(f"{path}: out of range")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{path}: not above {schema['exclusiveMinimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{path}: too few items")
        for i, item in enumerate(value):
            out += problems(schema.get("items", {}), item, f"{path}[{i}]")
    if isinstance(value, dict):
        out += _object(schema, value, path)
    for key, need in (("anyOf", lambda n: n >= 1), ("oneOf", lambda n: n == 1)):
        if key in schema and not need(sum(not problems(s, value, path) for s in schema[key])):
            out.append(f"{path}: fits {'none' if key == 'anyOf' else 'not exactly one'} of {key}")
    return out


def _object(schema: dict, value: dict, path: str) -> list[str]:
    out = [f"{path}: needs {k}" for k in schema.get("required", []) if k not in value]
    props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
    for key, item in value.items():
        if "propertyNames" in schema:
            out += problems(schema["propertyNames"], key, f"{path}.{key} (name)")
        if key in props:
            out += problems(props[key], item, f"{path}.{key}")
        elif extra is False:
            out.append(f"{path}.{key}: not allowed")
        elif isinstance(extra, dict):
            out += problems(extra, item, f"{path}.{key}")
    return out
