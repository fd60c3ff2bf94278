"""A model's `cmd:`: the argv of its transient unit, checked for what would make it serve nothing
at its url (a llama-swap macro left in, a --port other than url's)."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

_MACRO = re.compile(r"\$\{[^}]*\}")


def argv(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            out = shlex.split(value)
        except ValueError as e:
            raise ConfigError(f"{key}: cannot split into arguments: {e}") from None
    elif isinstance(value, list) and all(isinstance(a, (str, int, float)) for a in value):
        out = [str(a) for a in value]
    else:
        raise ConfigError(f"{key}: must be a command line or a list of arguments")
    if not out:
        raise ConfigError(f"{key}: must not be empty")
    if macros := sorted({m for a in out for m in _MACRO.findall(a)}):
        raise ConfigError(f"{key}: {', '.join(macros)} is a llama-swap macro, which llm-switch does not expand; "
                          "convert the config with `llm-switch import`, or write the value itself")
    if not os.path.isabs(os.path.expanduser(out[0])):
        raise ConfigError(f"{key}: the program must be an absolute path (got {out[0]!r})")
    out[0] = os.path.expanduser(out[0])
    return tuple(out)


def check_port(cmd: tuple[str, ...], url: str, key: str) -> None:
    """A cmd that says `--port N` must listen where the switch sends its requests."""
    given = None
    for i, arg in enumerate(cmd):
        if arg == "--port" and i + 1 < len(cmd):
            given = cmd[i + 1]
        elif arg.startswith("--port="):
            given = arg.partition("=")[2]
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if given is not None and given != str(port):
        raise ConfigError(f"{key}: --port {given} differs from the port of url {url}; the switch would wait "
                          f"for a backend that never answers there (set url: http://127.0.0.1:{given}, "
                          f"or --port {port})")
