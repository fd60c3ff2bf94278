"""Pure converters for config values: sizes, durations, URLs, addresses. Each raises ConfigError
naming the key path."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

# 8G, 8g, 8GB, 8GiB, 8Gi: all 8 * 1024**3; a bare B is bytes
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:iB|B|i)?|(B))\s*$", re.I)
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_FACTOR = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
OFF = ("off", "false", "no", "never")


def size(value: Any, key: str) -> int:
    """Bytes from `7.5G`, `512M`, `1200K`, `2T` (powers of 1024); a number needs its unit."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (number or isinstance(value, str) and _NUMBER.match(value)) and float(value) > 0:
        raise ConfigError(f"{key}: {value} bytes? write {value}G (or K, M, T: sizes need a unit)")
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{key}: must be a size such as 7.5G, 512M or 2T (got {value!r})")
    return int(float(m.group(1)) * _UNIT_FACTOR[(m.group(2) or "").upper()])


def byte_count(value: Any, key: str) -> int:
    """A positive number of bytes, or a size with its unit (`64M`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and not _NUMBER.match(value):
        return size(value, key)
    raise ConfigError(f"{key}: must be a number of bytes or a size such as 64M (got {value!r})")


def duration(value: Any, key: str) -> float:
    """Seconds from a positive number or `30s`, `10m`, `2h`, `500ms`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{key}: must be a duration such as 30, 30s, 10m or 2h (got {value!r})")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def optional_duration(value: Any, key: str) -> float | None:
    """A duration, or None for `off` / `false` / 0."""
    if value is False or value == 0 or (isinstance(value, str) and value.strip().lower() in OFF):
        return None
    return duration(value, key)


def format_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.3g}{unit}"
    return f"{n}B"


def url(value: Any, key: str) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        ok = bool(parts and parts.scheme in ("http", "https") and parts.hostname)
        ok = ok and parts.path in ("", "/") and not parts.query and not parts.fragment
        ok = ok and (parts.port is None or parts.port > 0)  # .port raises ValueError when not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{key}: must be an http(s) URL with no path, e.g. http://127.0.0.1:3004 (got {value!r})")
    return value.rstrip("/")


def listen(value: Any, key: str) -> tuple[str, int]:
    m = re.match(r"^(?:\[([0-9a-fA-F:]+)\]|([^:\[\]]+)):(\d+)$", str(value))
    port = int(m.group(3)) if m else -1
    if not m or not 0 < port < 65536:
        raise ConfigError(f"{key}: must be HOST:PORT, e.g. 127.0.0.1:3002 (got {value!r})")
    return m.group(1) or m.group(2), port


def positive_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}: must be a positive integer (got {value!r})")
    return value


def directory(value: Any, key: str) -> str:
    """An absolute directory path; `~` is the user's home."""
    path = os.path.expanduser(value) if isinstance(value, str) else ""
    if not os.path.isabs(path):
        raise ConfigError(f"{key}: must be an absolute path or start with ~/ (got {value!r})")
    return os.path.normpath(path)


def one_of(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value is False and "off" in choices:
        return "off"  # YAML 1.1 reads a bare `off` as false
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)} (got {value!r})")
    return value


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false (got {value!r})")
    return value


def reject_unknown(mapping: dict, prefix: str, known: set[str] | frozenset[str],
                   renamed: dict[str, str] | None = None) -> None:
    """Every unknown key at once, each with the closest known one or, for a key of another
    program (`renamed`), what to write instead."""
    found = [f"{prefix}{k}: unknown key; {unknown_hint(str(k), known, renamed or {})}"
             for k in mapping if k not in known]
    if found:
        raise ConfigError("\n".join(found), found)


def unknown_hint(key: str, known: set[str] | frozenset[str], renamed: dict[str, str]) -> str:
    if key in renamed:
        return renamed[key]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return f"known: {', '.join(sorted(known))}"


def kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)
