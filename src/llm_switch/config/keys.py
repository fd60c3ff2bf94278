"""`api_keys:` and who may reach the switch: keys from the config, a file or the environment, and
the rule that a switch reachable from other machines needs them.

    api_keys:
      - 3f9c0a…                                   # a key, for every model and route
      - {key_file: ~/.config/llm-switch/api-key}  # one key a line (blank and # lines skipped)
      - {key_env: WEBUI_KEY, name: webui, models: [qwen3-coder-flash]}

Error messages name the key path (`api_keys[2].key_env: …`) and never a key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import values as v
from .types import ApiKey, Config

MIN_KEY_LENGTH = 16
_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it must fit an HTTP header
_ENTRY_KEYS = {"key", "key_file", "key_env", "name", "models"}
_SOURCES = ("key", "key_file", "key_env")


def parse_keys(value: Any, names: dict[str, str], config_path: str | None = None,
               warnings: list[str] | None = None) -> tuple[ApiKey, ...]:
    """The keys of `api_keys:`; `names` maps every model name and alias to its model."""
    if value is None:
        return ()
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError("api_keys: must be a list of keys or of {key | key_file | key_env, name, models}")
    keys: list[ApiKey] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(value):
        where = f"api_keys[{i}]"
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a key or a mapping with one of key, key_file, key_env "
                              f"(got {v.kind(entry)})")
        v.reject_unknown(entry, where + ".", _ENTRY_KEYS)
        given = [s for s in _SOURCES if s in entry]
        if len(given) != 1:
            raise ConfigError(f"{where}: needs exactly one of key, key_file or key_env")
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"{where}.name: must be a non-empty string")
        models = _models(entry.get("models"), names, f"{where}.models")
        source = given[0]
        found = _secrets(entry[source], source, f"{where}.{source}", config_path, warnings)
        for j, (at, secret) in enumerate(found, 1):
            _check(secret, at)
            if secret in seen:
                raise ConfigError(f"{at}: the same key as {seen[secret]}")
            seen[secret] = at
            # never named by its characters: the name goes to logs and to 403 messages
            unnamed = f"key-{i}" if len(found) == 1 else f"key-{i}.{j}"
            keys.append(ApiKey(secret, name.strip() if name else unnamed, models))
    return tuple(keys)


def _secrets(value: Any, source: str, where: str, config_path: str | None,
             warnings: list[str] | None) -> list[tuple[str, str]]:
    """(key path, secret) of each key an entry gives."""
    if source == "key":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string")
        return [(where, value.strip())]
    if source == "key_env":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be the name of an environment variable")
        secret = os.environ.get(value, "").strip()
        if not secret:
            raise ConfigError(f"{where}: environment variable {value} is not set or empty (set it in the "
                              "unit: Environment= or EnvironmentFile=)")
        return [(f"{where} ({value})", secret)]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a file path")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and config_path:
        path = Path(config_path).parent / path
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and warnings is not None:
        warnings.append(f"{where}: {path} can be read by other users; chmod 600 it")
    out = [(f"{where} ({path} line {n})", line.strip()) for n, line in enumerate(text.splitlines(), 1)
           if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise ConfigError(f"{where}: {path} holds no key (one key a line)")
    return out


def _check(secret: str, where: str) -> None:
    if len(secret) < MIN_KEY_LENGTH:
        raise ConfigError(f"{where}: a key must be at least {MIN_KEY_LENGTH} characters (this one has "
                          f"{len(secret)}); make one with: openssl rand -hex 24")
    if not _KEY.match(secret):
        raise ConfigError(f"{where}: a key may hold printable ASCII characters only, no spaces")


def _models(value: Any, names: dict[str, str], where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise ConfigError(f"{where}: must be a list of model names (leave it out for all models)")
    for n in value:
        if n not in names:
            raise ConfigError(f"{where}: unknown model {n!r} (known: {', '.join(sorted(set(names.values())))})")
    return frozenset(names[n] for n in value)


def backend_api_key(value: Any, where: str) -> str | None:
    """`backend_api_key`: the key a model's llama-server was started with (`--api-key`)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _KEY.match(value.strip()):
        raise ConfigError(f"{where}: must be the key the backend runs with (printable ASCII, no spaces)")
    return value.strip()


def readable_secrets(raw: dict, path: str) -> list[str]:
    """A warning when `path` holds a key itself (not a key_file or key_env) and other users may read it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return []
    entries = raw.get("api_keys")
    entries = [entries] if isinstance(entries, (str, dict)) else entries if isinstance(entries, list) else []
    inline = [f"api_keys[{i}]" for i, e in enumerate(entries) if isinstance(e, str) or isinstance(e, dict) and "key" in e]
    models = raw.get("models") if isinstance(raw.get("models"), dict) else {}
    inline += [f"models.{n}.backend_api_key" for n, m in models.items() if isinstance(m, dict) and "backend_api_key" in m]
    if not inline:
        return []
    return [f"{', '.join(inline)}: a key written in this file, which other users can read (mode "
            f"{stat.S_IMODE(mode):o}); chmod 600 {path}, or move the key to a key_file"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(config: Config) -> None:
    """A switch that other machines can reach needs keys, unless told otherwise."""
    if config.api_keys or config.allow_unauthenticated or is_loopback(config.listen_host):
        return
    raise ConfigError(
        f"listen: {config.listen} can be reached from other machines, but api_keys is empty: anyone there "
        "could run any model and unload them. Add api_keys (setup.sh --lan writes one to "
        "~/.config/llm-switch/api-key; then `api_keys: [{key_file: ~/.config/llm-switch/api-key}]`), "
        "or listen on 127.0.0.1, or set allow_unauthenticated: true if something else guards the port")


def exposure_warning(config: Config) -> str | None:
    """The warning logged at every start while allow_unauthenticated is in force."""
    if not config.allow_unauthenticated or config.api_keys:
        return None
    if is_loopback(config.listen_host):
        return None
    hosts = ", ".join(sorted(config.allowed_hosts)) or "none"
    return (f"allow_unauthenticated: true — {config.listen} serves every model and the admin routes "
            "to anyone who can reach it, without a key; without keys it answers only requests whose Host "
            f"is a loopback name, the listen address or one of allowed_hosts ({hosts})")
