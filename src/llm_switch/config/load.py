"""Reading config.yaml: `load(path)` reads, `parse(text)` checks; the seed project's format too."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from . import keys as k
from . import memory as mem
from . import models_dir as md
from . import values as v
from . import web
from .types import (DEFAULT_BACKEND, DEFAULT_HEADER_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_BODY,
                    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_JSON, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT, DEFAULT_PROMPT_CACHE_MAX,
                    DEFAULT_PROMPT_CACHE_MIN_TOKENS, DEFAULT_READAHEAD_MARGIN, DEFAULT_SHUTDOWN_GRACE,
                    LOADING_PROGRESS,
                    Config, Model, PromptCacheSettings, default_prompt_cache_dir)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.service$")
_TOP_KEYS = {"listen", "backend", "health_timeout", "max_body_bytes", "models", "memory_budget", "min_loaded",
             "idle_unload", "max_wait", "max_queue", "preload", "shutdown_grace",
             "prompt_cache", "prompt_cache_dir", "prompt_cache_max", "prompt_cache_min_tokens", "loading_progress",
             "api_keys", "allow_unauthenticated", "metrics_public", "max_connections", "header_timeout",
             "max_json_bytes", "allowed_hosts", "cors_origins",
             "memory_device", "memory_reserve", "models_dir", "models_defaults", "readahead", "readahead_margin"}
_MODEL_KEYS = {"unit", "cmd", "url", "aliases", "health_timeout", "repair_tool_calls", "memory", "min_loaded",
               "idle_unload", "prompt_cache", "backend_api_key", "loading_progress", "unlisted",
               "readahead"}


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
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {v.kind(raw)}")
    warnings: list[str] = []
    if "server" in raw:
        raw = _from_seed_format(raw, warnings)
    v.reject_unknown(raw, "", _TOP_KEYS)

    host, port = v.listen(raw.get("listen", DEFAULT_LISTEN), "listen")
    defaults = _model_defaults(raw)
    budget = (memory := mem.budget(raw))["memory_budget"]

    models, names = _models(raw, defaults, budget, warnings)
    api_keys = k.parse_keys(raw.get("api_keys"), names, path, warnings)
    if path is not None:
        warnings.extend(k.readable_secrets(raw, path))
    config = Config(host, port, models, path=path, warnings=tuple(warnings), names=names, **memory,
                    preload=_preload(raw.get("preload", []), names), prompt_cache=_prompt_cache(raw),
                    api_keys=api_keys, **_settings(raw))
    k.check_exposure(config)
    return config


def _models(raw: dict, defaults: dict[str, Any], budget: int | None,
            warnings: list[str]) -> tuple[dict[str, Model], dict[str, str]]:
    """The models (those of models_dir too), and every name and alias → its model's name."""
    models_raw = raw.get("models")
    if (not isinstance(models_raw, dict) or not models_raw) and not (models_raw is None and "models_dir" in raw):
        raise ConfigError("models: must be a mapping of at least one model name to a unit or settings")
    models: dict[str, Model] = {}
    names: dict[str, str] = {}
    units: dict[str, str] = {}
    for name, spec in (models_raw or {}).items():
        model = _model(str(name), spec, defaults)
        for key in (model.name, *model.aliases):
            if key in names:
                raise ConfigError(f"models.{model.name}: name or alias {key!r} is already used by model {names[key]!r}")
            names[key] = model.name
        if model.unit in units:
            raise ConfigError(f"models.{model.name}.unit: {model.unit} is already used by model {units[model.unit]!r}")
        if budget is not None and model.memory is not None and model.memory > budget:
            raise ConfigError(f"models.{model.name}.memory: {v.format_size(model.memory)} is larger than "
                              f"memory_budget {v.format_size(budget)}; it could never be loaded")
        units[model.unit] = model.name
        models[model.name] = model
    _dir_models(raw, defaults, models, names, warnings)
    return models, names


def _settings(raw: dict) -> dict[str, Any]:
    """The top-level settings that need no other part of the config."""
    return dict(
        max_body_bytes=v.positive_int(raw.get("max_body_bytes", DEFAULT_MAX_BODY), "max_body_bytes"),
        max_wait=v.duration(raw.get("max_wait", DEFAULT_MAX_WAIT), "max_wait"),
        max_queue=v.positive_int(raw.get("max_queue", DEFAULT_MAX_QUEUE), "max_queue"),
        shutdown_grace=v.duration(raw.get("shutdown_grace", DEFAULT_SHUTDOWN_GRACE), "shutdown_grace"),
        allow_unauthenticated=v.boolean(raw.get("allow_unauthenticated", False), "allow_unauthenticated"),
        metrics_public=v.boolean(raw.get("metrics_public", False), "metrics_public"),
        max_connections=v.positive_int(raw.get("max_connections", DEFAULT_MAX_CONNECTIONS), "max_connections"),
        header_timeout=v.duration(raw.get("header_timeout", DEFAULT_HEADER_TIMEOUT), "header_timeout"),
        max_json_bytes=v.positive_int(raw.get("max_json_bytes", DEFAULT_MAX_JSON), "max_json_bytes"),
        allowed_hosts=web.allowed_hosts(raw.get("allowed_hosts")),
        cors_origins=web.cors_origins(raw.get("cors_origins")),
        readahead_margin=v.size(raw.get("readahead_margin", DEFAULT_READAHEAD_MARGIN), "readahead_margin"),
    )


def _dir_models(raw: dict, defaults: dict[str, Any], models: dict[str, Model], names: dict[str, str],
                warnings: list[str]) -> None:
    """The GGUF files of models_dir as models (config/models_dir.py); a model of models: wins."""
    if "models_dir" not in raw:
        return
    directory = v.directory(raw["models_dir"], "models_dir")
    if not os.path.isdir(directory):
        raise ConfigError(f"models_dir: {directory} is not a directory")
    d = md.defaults(raw.get("models_defaults"), defaults["url"])
    found, skipped = md.scan(directory)
    warnings += skipped
    memory, memory_auto = mem.model_memory({"memory": d["memory"]}, "models_defaults", defaults["budget_set"])
    same = {k: defaults[k] for k in ("health_timeout", "min_loaded", "idle_unload", "prompt_cache", "loading_progress",
                                      "readahead")}
    for i, (name, path) in enumerate(found.items()):
        port = d["port"] + i  # one each, in file order: they may run side by side under a memory_budget
        if name in names:
            if names[name] != name:
                warnings.append(f"models_dir: {path}: {name!r} is an alias of model {names[name]!r}; left out")
            continue
        models[name] = Model(name=name, unit=f"llm-switch-{_unit_escape(name)}.service",
                             url=f"http://127.0.0.1:{port}", cmd=md.argv(name, path, port, d),
                             memory=memory, memory_auto=memory_auto, **same)
        names[name] = name
    if not models:
        raise ConfigError(f"models: is empty and models_dir {directory} holds no GGUF file")


def _model_defaults(raw: dict) -> dict[str, Any]:
    """What a model has unless it says otherwise."""
    return {
        "url": v.url(raw.get("backend", DEFAULT_BACKEND), "backend"),
        "health_timeout": v.positive_seconds(raw.get("health_timeout", DEFAULT_HEALTH_TIMEOUT), "health_timeout"),
        "min_loaded": v.duration(raw["min_loaded"], "min_loaded") if "min_loaded" in raw else None,
        "idle_unload": v.optional_duration(raw.get("idle_unload", "off"), "idle_unload"),
        "prompt_cache": v.boolean(raw.get("prompt_cache", True), "prompt_cache"),
        "loading_progress": v.one_of(raw.get("loading_progress", "reasoning"), "loading_progress",
                                     LOADING_PROGRESS),
        "readahead": v.boolean(raw.get("readahead", True), "readahead"),
        "budget_set": raw.get("memory_budget") is not None,  # then a model with no memory is auto
    }


def _prompt_cache(raw: dict) -> PromptCacheSettings:
    return PromptCacheSettings(
        dir=v.directory(raw["prompt_cache_dir"], "prompt_cache_dir") if "prompt_cache_dir" in raw
        else default_prompt_cache_dir(),
        max_bytes=v.size(raw.get("prompt_cache_max", DEFAULT_PROMPT_CACHE_MAX), "prompt_cache_max"),
        min_tokens=v.positive_int(raw.get("prompt_cache_min_tokens", DEFAULT_PROMPT_CACHE_MIN_TOKENS),
                                  "prompt_cache_min_tokens"))


def _preload(value: Any, names: dict[str, str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ConfigError("preload: must be a list of model names")
    out: list[str] = []
    for i, n in enumerate(value):
        if n not in names:
            raise ConfigError(f"preload[{i}]: unknown model {n!r} (known: {', '.join(sorted(set(names.values())))})")
        if names[n] not in out:
            out.append(names[n])
    return tuple(out)


def _from_seed_format(raw: dict, warnings: list[str]) -> dict:
    """The seed project's `server: {host, port, llama_url, trace_log}` + flat `models:`."""
    clash = set(raw) & {"listen", "backend"}
    if clash:
        raise ConfigError(f"server: cannot be combined with {', '.join(sorted(clash))} (use one form)")
    server = raw["server"] or {}
    if not isinstance(server, dict):
        raise ConfigError(f"server: must be a mapping (got {v.kind(server)})")
    v.reject_unknown(server, "server.", {"host", "port", "llama_url", "trace_log"})
    if "trace_log" in server:
        warnings.append("server.trace_log: ignored (requests are logged to the journal instead)")
    out = {k: val for k, val in raw.items() if k != "server"}
    host = server.get("host", "127.0.0.1")
    port = server.get("port", 3002)
    if not isinstance(port, int) or isinstance(port, bool):
        raise ConfigError(f"server.port: must be an integer (got {port!r})")
    host = f"[{host}]" if ":" in str(host) else host
    out["listen"] = f"{host}:{port}"
    if "llama_url" in server:
        out["backend"] = server["llama_url"]
    return out


def _model(name: str, spec: Any, defaults: dict[str, Any]) -> Model:
    key = f"models.{name}"
    _check_name(name, key)
    if isinstance(spec, str):
        spec = {"unit": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: must be a unit name or a mapping (got {v.kind(spec)})")
    v.reject_unknown(spec, key + ".", _MODEL_KEYS)
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
    memory, memory_auto = mem.model_memory(spec, key, defaults["budget_set"])
    aliases = spec.get("aliases", [])
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{key}.aliases: must be a list of names")
    if bad := next((a for a in aliases if not a.isprintable()), None):
        raise ConfigError(f"{key}.aliases: {bad!r} must not hold control characters")
    return Model(
        name=name,
        unit=unit,
        url=v.url(spec["url"], f"{key}.url") if "url" in spec else defaults["url"],
        aliases=tuple(aliases),
        cmd=cmd,
        health_timeout=(v.positive_seconds(spec["health_timeout"], f"{key}.health_timeout")
                        if "health_timeout" in spec else defaults["health_timeout"]),
        repair_tool_calls=v.boolean(spec.get("repair_tool_calls", True), f"{key}.repair_tool_calls"),
        memory=memory,
        memory_auto=memory_auto,
        unlisted=v.boolean(spec.get("unlisted", False), f"{key}.unlisted"),
        min_loaded=v.duration(spec["min_loaded"], f"{key}.min_loaded") if "min_loaded" in spec
        else defaults["min_loaded"],
        idle_unload=v.optional_duration(spec["idle_unload"], f"{key}.idle_unload") if "idle_unload" in spec
        else defaults["idle_unload"],
        prompt_cache=v.boolean(spec["prompt_cache"], f"{key}.prompt_cache") if "prompt_cache" in spec
        else defaults["prompt_cache"],
        backend_api_key=k.backend_api_key(spec.get("backend_api_key"), f"{key}.backend_api_key"),
        loading_progress=v.one_of(spec["loading_progress"], f"{key}.loading_progress", LOADING_PROGRESS)
        if "loading_progress" in spec else defaults["loading_progress"],
        readahead=v.boolean(spec["readahead"], f"{key}.readahead") if "readahead" in spec else defaults["readahead"],
    )


def _check_name(name: str, key: str) -> None:
    """Model names are checked like unit names: they name folders (the prompt cache) and log lines."""
    if "/" in name:
        why = "must not hold '/' (it names a folder of the prompt cache); give the name with '/' as an alias"
    elif ".." in name:
        why = "must not hold '..' (it names a folder of the prompt cache)"
    elif any(not c.isprintable() for c in name):
        why = "must not hold control characters"
    elif not _MODEL_NAME.match(name):
        why = "must start with a letter or digit and hold only letters, digits and . _ : @ + -"
    else:
        return
    raise ConfigError(f"{key}: model name {why} (got {name!r})")


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
