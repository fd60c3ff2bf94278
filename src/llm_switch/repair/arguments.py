"""Tool-call arguments: a JSON object string, whatever the model wrote.

Pure code, no I/O. Arguments that parse as a JSON object stay byte-identical; anything else is
repaired, cheapest way first, into a JSON object string (non-ASCII kept as is), or becomes "{}"
with a warning naming the tool.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import warnings
from typing import Any

import json_repair

log = logging.getLogger(__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python accepts them, llama-server does not


class _Decoder(json.JSONDecoder):
    """A JSON text nested deeper than Python's recursion limit is just invalid JSON (ValueError),
    never a RecursionError that escapes into a request."""

    def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
        try:
            return super().raw_decode(s, idx)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


DECODER = _Decoder(parse_constant=_reject_constant)


def dumps(obj: Any) -> str:
    """JSON text of `obj`; ValueError for NaN or nesting too deep to write."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _first_object(obj: Any) -> dict | None:
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, list):  # json-repair reads `{..}{..}` as a list of both
        return next((x for x in obj if isinstance(x, dict)), None)
    return None


def repair_arguments(value: Any, name: str = "?") -> tuple[str, bool]:
    """Return (arguments as a JSON object string, whether it differs from `value`)."""
    if isinstance(value, str):
        fixed = _repair_str(value, name, depth=0)
        return fixed, fixed != value
    if isinstance(value, dict):  # an object instead of a string: encode it as OpenAI does
        try:
            return dumps(value), True
        except ValueError:
            pass
    log.warning("tool %s: arguments unusable (%s), replaced with {}", name, type(value).__name__)
    return "{}", True


_TOKEN = re.compile(
    r'(?P<str>"[^"\\]*(?:\\.[^"\\]*)*")|(?P<open>"[^"\\]*(?:\\.[^"\\]*)*\\?\Z)|(?P<punct>[{}\[\],:])', re.S
)
_CLOSER = {"{": "}", "[": "]"}


def _close_up(s: str) -> str | None:
    """The cheap fix for the usual breakage, keeping the model's own formatting: drop trailing
    commas, close a truncated string and the open brackets. None when that is not enough."""
    if not s.lstrip().startswith("{"):
        return None
    stack: list[str] = []
    drop: list[int] = []  # trailing commas
    comma = -1  # position of the last comma token
    tail = ""
    for m in _TOKEN.finditer(s):
        tok = m.group()
        if m.lastgroup == "open":
            backslashes = len(tok) - len(tok.rstrip("\\"))
            if backslashes % 2:  # a dangling escape
                s = s[:-1]
            tail = '"'
        elif tok in "}]":
            if not stack or _CLOSER[stack.pop()] != tok:
                return None
            if comma >= 0 and not s[comma + 1 : m.start()].strip():
                drop.append(comma)
        elif tok in "{[":
            stack.append(tok)
        comma = m.start() if tok == "," else -1
    if drop:
        s = "".join(s[i + 1 : j] for i, j in zip([-1, *drop], [*drop, len(s)]))
    fixed = (s + tail).rstrip()
    if fixed.endswith(","):
        fixed = fixed[:-1]
    fixed += "".join(_CLOSER[c] for c in reversed(stack))
    try:
        return fixed if isinstance(DECODER.decode(fixed), dict) else None
    except ValueError:
        return None


def _python_literal(s: str) -> str | None:
    """A Python dict written instead of JSON ({'a': True, 'b': None}): read it with the (safe,
    fast) literal parser rather than json-repair, which is slow on long text."""
    if not s.lstrip().startswith("{"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes like '\p' warn
            obj = ast.literal_eval(s.strip())
        return dumps(obj) if isinstance(obj, dict) else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _repair_str(s: str, name: str, depth: int) -> str:
    try:
        obj = DECODER.decode(s)
    except ValueError:
        pass
    else:
        if isinstance(obj, dict):
            return s  # valid: byte-identical
        if isinstance(obj, str) and depth == 0:  # double-encoded: "{\"a\": 1}"
            return _repair_str(obj, name, depth + 1)
    start = len(s) - len(s.lstrip())
    try:  # one whole object followed by more (a second object, stray text): keep the first
        obj, end = DECODER.raw_decode(s, start)
    except ValueError:
        pass
    else:
        if isinstance(obj, dict):
            return s[start:end]
    if (quick := _close_up(s)) is not None:
        return quick
    if (literal := _python_literal(s)) is not None:
        return literal
    if s.strip():
        try:
            obj = json_repair.repair_json(s, return_objects=True, skip_json_loads=True)
        except Exception:  # json-repair has no narrow error type; any failure means "unrepairable"
            obj = None
        if isinstance(obj, str) and depth == 0 and obj.strip():
            return _repair_str(obj, name, depth + 1)
        if (found := _first_object(obj)) is not None:
            try:
                return dumps(found)
            except ValueError:
                pass
        log.warning("tool %s: arguments not repairable (%d chars), replaced with {}", name, len(s))
        log.debug("tool %s: unrepairable arguments: %r", name, s)
    else:
        log.warning("tool %s: empty arguments, replaced with {}", name)
    return "{}"


def fix_tool_calls(calls: Any, repaired: list[str]) -> None:
    if not isinstance(calls, list):
        return
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        name = fn.get("name") if isinstance(fn.get("name"), str) else "?"
        fixed, changed = repair_arguments(fn.get("arguments"), name)
        if changed:
            fn["arguments"] = fixed
            repaired.append(name)


def repair_request(body: dict) -> list[str]:
    """Repairs tool_calls[].function.arguments in the request's assistant messages in place; returns the names of the tools whose arguments were repaired."""
    repaired: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return repaired
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            fix_tool_calls(msg.get("tool_calls"), repaired)
    return repaired
