"""config.yaml: typed, frozen, validated once. Every error names its YAML key path."""

from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:3002"
DEFAULT_BACKEND = "http://127.0.0.1:3004"
DEFAULT_HEALTH_TIMEOUT = 300.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.service$")


@dataclass(frozen=True)
class Model:
    name: str
    unit: str  # the systemd unit: configured, or llm-switch-<name>.service for cmd models
    url: str
    aliases: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None  # argv of a transient unit
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    repair_tool_calls: bool = True

    @property
    def transient(self) -> bool:
        return self.cmd is not None


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    models: dict[str, Model]
    max_body_bytes: int = DEFAULT_MAX_BODY
    path: str | None = None
    warnings: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # name or alias → model name

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def resolve(self, name: str) -> Model | None:
        model_name = self.names.get(name)
        return self.models[model_name] if model_name else None


def find_path(explicit: str | None) -> Path:
    """--config, else $LLM_SWITCH_CONFIG, else ~/.config/llm-switch/config.yaml, else ./config.yaml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("LLM_SWITCH_CONFIG"):
        return Path(env)
    user = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "llm-switch" / "config.yaml"
    if user.exists():
        return user
    return Path("config.yaml")


def load(path: str | os.PathLike) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    return parse(text, path=str(path))


def parse(text: str, path: str | None = None) -> Config:
    where = path or "config"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {_kind(raw)}")
    warnings: list[str] = []
    if "server" in raw:
        raw = _from_seed_format(raw, warnings)
    _reject_unknown(raw, "", {"listen", "backend", "health_timeout", "max_body_bytes", "models"})

    host, port = parse_listen(raw.get("listen", DEFAULT_LISTEN), "listen")
    backend = _url(raw.get("backend", DEFAULT_BACKEND), "backend")
    health_timeout = _positive(raw.get("health_timeout", DEFAULT_HEALTH_TIMEOUT), "health_timeout")
    max_body = raw.get("max_body_bytes", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body <= 0:
        raise ConfigError(f"max_body_bytes: must be a positive integer (got {max_body!r})")

    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError("models: must be a mapping of at least one model name to a unit or settings")
    models: dict[str, Model] = {}
    names: dict[str, str] = {}
    units: dict[str, str] = {}
    for name, spec in models_raw.items():
        model = _model(str(name), spec, backend, health_timeout)
        for key in (model.name, *model.aliases):
            if key in names:
                raise ConfigError(f"models.{model.name}: name or alias {key!r} is already used by model {names[key]!r}")
            names[key] = model.name
        if model.unit in units:
            raise ConfigError(f"models.{model.name}.unit: {model.unit} is already used by model {units[model.unit]!r}")
        units[model.unit] = model.name
        models[model.name] = model
    return Config(host, port, models, max_body, path, tuple(warnings), names)


def _from_seed_format(raw: dict, warnings: list[str]) -> dict:
    """The seed project's `server: {host, port, llama_url, trace_log}` + flat `models:`."""
    clash = set(raw) & {"listen", "backend"}
    if clash:
        raise ConfigError(f"server: cannot be combined with {', '.join(sorted(clash))} (use one form)")
    server = raw["server"] or {}
    if not isinstance(server, dict):
        raise ConfigError(f"server: must be a mapping (got {_kind(server)})")
    _reject_unknown(server, "server.", {"host", "port", "llama_url", "trace_log"})
    if "trace_log" in server:
        warnings.append("server.trace_log: ignored (requests are logged to the journal instead)")
    out = {k: v for k, v in raw.items() if k != "server"}
    host = server.get("host", "127.0.0.1")
    port = server.get("port", 3002)
    if not isinstance(port, int) or isinstance(port, bool):
        raise ConfigError(f"server.port: must be an integer (got {port!r})")
    host = f"[{host}]" if ":" in str(host) else host
    out["listen"] = f"{host}:{port}"
    if "llama_url" in server:
        out["backend"] = server["llama_url"]
    return out


def _model(name: str, spec: Any, backend: str, health_timeout: float) -> Model:
    key = f"models.{name}"
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"{key}: model name must start with a letter or digit and hold no spaces")
    if isinstance(spec, str):
        spec = {"unit": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: must be a unit name or a mapping (got {_kind(spec)})")
    _reject_unknown(spec, key + ".", {"unit", "cmd", "url", "aliases", "health_timeout", "repair_tool_calls"})
    if ("unit" in spec) == ("cmd" in spec):
        raise ConfigError(f"{key}: needs exactly one of unit or cmd")
    cmd = None
    if "unit" in spec:
        unit = spec["unit"]
        if not isinstance(unit, str) or not _UNIT_NAME.match(unit):
            raise ConfigError(f"{key}.unit: must end in .service (got {unit!r})")
    else:
        cmd = _cmd(spec["cmd"], f"{key}.cmd")
        unit = f"llm-switch-{_unit_escape(name)}.service"
    aliases = spec.get("aliases", [])
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{key}.aliases: must be a list of names")
    repair = spec.get("repair_tool_calls", True)
    if not isinstance(repair, bool):
        raise ConfigError(f"{key}.repair_tool_calls: must be true or false (got {repair!r})")
    return Model(
        name=name,
        unit=unit,
        url=_url(spec.get("url", backend), f"{key}.url"),
        aliases=tuple(aliases),
        cmd=cmd,
        health_timeout=_positive(spec.get("health_timeout", health_timeout), f"{key}.health_timeout"),
        repair_tool_calls=repair,
    )


def _cmd(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise ConfigError(f"{key}: cannot split into arguments: {e}") from None
    elif isinstance(value, list) and all(isinstance(a, (str, int, float)) for a in value):
        argv = [str(a) for a in value]
    else:
        raise ConfigError(f"{key}: must be a command line or a list of arguments")
    if not argv:
        raise ConfigError(f"{key}: must not be empty")
    if not os.path.isabs(os.path.expanduser(argv[0])):
        raise ConfigError(f"{key}: the program must be an absolute path (got {argv[0]!r})")
    argv[0] = os.path.expanduser(argv[0])
    return tuple(argv)


def _unit_escape(name: str) -> str:
    """Model names may hold characters a unit name cannot: escape each byte of those as systemd
    does (`\\x2b` for `+`); the characters allowed in unit names stay as they are."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in ":-_.") else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in name
    )


def parse_listen(value: Any, key: str) -> tuple[str, int]:
    m = re.match(r"^(?:\[([0-9a-fA-F:]+)\]|([^:\[\]]+)):(\d+)$", str(value))
    port = int(m.group(3)) if m else -1
    if not m or not 0 < port < 65536:
        raise ConfigError(f"{key}: must be HOST:PORT, e.g. 127.0.0.1:3002 (got {value!r})")
    return m.group(1) or m.group(2), port


def _url(value: Any, key: str) -> str:
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


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}: must be a positive number of seconds (got {value!r})")
    return float(value)


def _reject_unknown(mapping: dict, prefix: str, known: set[str]) -> None:
    for k in mapping:
        if k not in known:
            raise ConfigError(f"{prefix}{k}: unknown key (known: {', '.join(sorted(known))})")


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)
