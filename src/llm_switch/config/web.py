"""`allowed_hosts` and `cors_origins`: who a browser may reach the switch as, and from which
pages (the rules are in http/guard.py and docs/security.md)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")  # _: Docker names
_IPV6 = re.compile(r"^[0-9a-f:.]+$")
SCHEMES = ("http", "https", "chrome-extension", "moz-extension")  # pages, and browser extensions' own


def host_name(value: str) -> str | None:
    """The name of a `Host` header or an allowed_hosts entry, lowercased, without port, brackets or
    trailing dot; None when it is no host name or address."""
    value = value.strip().lower()
    if value.startswith("["):
        inner, _, rest = value[1:].partition("]")
        ok = _IPV6.match(inner) and ":" in inner and (rest == "" or re.fullmatch(r":\d{1,5}", rest))
        return inner if ok else None
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name if _HOST_NAME.match(name) else None


def allowed_hosts(value: Any, key: str = "allowed_hosts") -> frozenset[str]:
    """Host names (or addresses) accepted beside loopback's; no port, no scheme."""
    names = _strings(value, key, "host names, e.g. [llm.home.arpa]")
    out = set()
    for i, entry in enumerate(names):
        text = entry.strip().lower()
        if text.count(":") > 1 and not text.startswith("["):
            text = f"[{text}]"  # a bare IPv6 address
        name = host_name(text)
        if name is None or ":" in text.rpartition("]")[2]:
            raise ConfigError(f"{key}[{i}]: must be a host name or address without scheme or port "
                              f"(got {entry!r})")
        out.add(name)
    return frozenset(out)


def cors_origins(value: Any, key: str = "cors_origins") -> frozenset[str]:
    """Web origins (`scheme://host[:port]`, as a browser's `Origin` header says them)."""
    out = set()
    for i, entry in enumerate(_strings(value, key, "origins, e.g. [http://localhost:8080]")):
        origin = entry.strip().rstrip("/").lower()
        try:
            parts = urlsplit(origin)
            ok = parts.scheme in SCHEMES and bool(parts.hostname) and not parts.path
            ok = ok and not parts.query and not parts.fragment and not parts.username
            ok = ok and (parts.port is None or parts.port > 0)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{key}[{i}]: must be an origin such as http://localhost:8080: scheme, host and "
                              f"port only, as the browser shows it (got {entry!r})")
        default = {"http": 80, "https": 443}.get(parts.scheme)
        out.add(origin.removesuffix(f":{default}") if parts.port == default else origin)  # as browsers send it
    return frozenset(out)


def _strings(value: Any, key: str, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(e, str) and e.strip() for e in value):
        raise ConfigError(f"{key}: must be a list of {what}")
    return value
