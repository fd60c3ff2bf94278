"""Reading config.yaml: `load(path)` reads, `parse(text)` checks; the seed project's format too."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from . import command, schema
from . import groups as g
from . import keys as k
from . import memory as mem
from . import models_dir as md
from . import values as v
from . import web
from .problems import Problems, yaml_error
from .types import (DEFAULT_BACKEND, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LISTEN, DEFAULT_PROMPT_CACHE_MAX,
                    DEFAULT_PROMPT_CACHE_MIN_TOKENS, LOADING_PROGRESS, Config, Model, PromptCacheSettings,
                    default_prompt_cache_dir)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.service$")
_TOP_KEYS = schema.names(schema.TOP)
_MODEL_KEYS = schema.names(schema.MODEL)
_DEFAULTS = schema.defaults(schema.TOP)


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
    """The config, or one ConfigError listing every problem (`FILE:LINE: key.path: message`)."""
    where = path or "config"
    raw = _read(text, where)
    problems, warnings = Problems(), []
    if "server" in raw:
        raw = problems.get(_from_seed_format, raw, warnings, default={k: x for k, x in raw.items() if k != "server"})
    problems.get(v.reject_unknown, raw, "", _TOP_KEYS, schema.LLAMA_SWAP_TOP, default=None)
    host, port = problems.get(v.listen, raw.get("listen", DEFAULT_LISTEN), "listen",
                              default=v.listen(DEFAULT_LISTEN, "listen"))
    defaults = _model_defaults(raw, problems)
    memory = problems.get(mem.budget, raw, default=mem.budget({}))
    raw, groups_raw = g.split(raw)
    models, names = _models(raw, defaults, memory["memory_budget"], warnings, problems)
    problems.get(g.check_pins, models, memory["memory_budget"], default=None)
    any_of, any_of_names = problems.get(g.parse, groups_raw, names, default=({}, {}))
    api_keys = problems.get(k.parse_keys, raw.get("api_keys"), names, path, warnings, default=())
    if path is not None:
        warnings.extend(k.readable_secrets(raw, path))
    config = Config(host, port, models, path=path, warnings=tuple(warnings), names=names, **memory,
                    preload=problems.get(_preload, raw.get("preload", []), names, default=()),
                    prompt_cache=_prompt_cache(raw, problems), api_keys=api_keys, any_of=any_of,
                    any_of_names=any_of_names, **_settings(raw, problems))
    if not problems.found:
        problems.get(k.check_exposure, config, default=None)
    problems.raise_any(text, path)
    return config


def _read(text: str, where: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise yaml_error(e, where) from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {v.kind(raw)}")
    return raw


def _models(raw: dict, defaults: dict[str, Any], budget: int | None, warnings: list[str],
            problems: Problems) -> tuple[dict[str, Model], dict[str, str]]:
    """The models (those of models_dir too), and every name and alias → its model's name."""
    models_raw = raw.get("models")
    if (not isinstance(models_raw, dict) or not models_raw) and not (models_raw is None and "models_dir" in raw):
        problems.add("models: must be a mapping of at least one model name to a unit or settings")
    models: dict[str, Model] = {}
    names: dict[str, str] = {}
    units: dict[str, str] = {}
    for name, spec in (models_raw if isinstance(models_raw, dict) else {}).items():
        model = _model(str(name), spec, defaults, problems)
        if model is None:  # refused: its names still count, so preload and api_keys do not refuse them too
            aliases = spec.get("aliases") if isinstance(spec, dict) else None
            for n in [name, *(aliases if isinstance(aliases, list) else [])]:
                names.setdefault(str(n), str(name))
            continue
        if problems.get(_unique, model, budget, names, units, default=False) is False:
            continue
        names.update({key: model.name for key in (model.name, *model.aliases)})
        units[model.unit] = model.name
        models[model.name] = model
    problems.get(_dir_models, raw, defaults, models, names, warnings, default=None)
    return models, names


def _unique(model: Model, budget: int | None, names: dict[str, str], units: dict[str, str]) -> bool:
    """A model's names and unit are its own, and it fits the budget."""
    for key in (model.name, *model.aliases):
        if key in names:
            raise ConfigError(f"models.{model.name}: name or alias {key!r} is already used by model {names[key]!r}")
    if model.unit in units:
        raise ConfigError(f"models.{model.name}.unit: {model.unit} is already used by model {units[model.unit]!r}")
    if budget is not None and model.memory is not None and model.memory > budget:
        raise ConfigError(f"models.{model.name}.memory: {v.format_size(model.memory)} is larger than "
                          f"memory_budget {v.format_size(budget)}; it could never be loaded")
    return True


# the top-level settings that need no other part of the config: their converter; the key's
# default comes from the schema table
_SETTINGS = {
    "max_body_bytes": v.byte_count, "max_json_bytes": v.byte_count, "max_wait": v.duration,
    "max_queue": v.positive_int, "shutdown_grace": v.duration, "allow_unauthenticated": v.boolean,
    "metrics_public": v.boolean, "max_connections": v.positive_int, "header_timeout": v.duration,
    "allowed_hosts": web.allowed_hosts, "cors_origins": web.cors_origins, "readahead_margin": v.size,
}


def _settings(raw: dict, problems: Problems) -> dict[str, Any]:
    out = {}
    for key, convert in _SETTINGS.items():
        default = yaml.safe_load(_DEFAULTS[key])
        out[key] = problems.get(convert, raw.get(key, default), key, default=convert(default, key))
    return out


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


def _model_defaults(raw: dict, problems: Problems) -> dict[str, Any]:
    """What a model has unless it says otherwise."""
    get = problems.get
    return {
        "url": get(v.url, raw.get("backend", DEFAULT_BACKEND), "backend", default=DEFAULT_BACKEND),
        "health_timeout": get(v.duration, raw.get("health_timeout", DEFAULT_HEALTH_TIMEOUT), "health_timeout",
                              default=DEFAULT_HEALTH_TIMEOUT),
        "min_loaded": get(v.duration, raw["min_loaded"], "min_loaded", default=None) if "min_loaded" in raw
        else None,
        "idle_unload": get(v.optional_duration, raw.get("idle_unload", "off"), "idle_unload", default=None),
        "prompt_cache": get(v.boolean, raw.get("prompt_cache", True), "prompt_cache", default=True),
        "loading_progress": get(v.one_of, raw.get("loading_progress", "reasoning"), "loading_progress",
                                LOADING_PROGRESS, default="reasoning"),
        "readahead": get(v.boolean, raw.get("readahead", True), "readahead", default=True),
        "budget_set": raw.get("memory_budget") is not None,  # then a model with no memory is auto
    }


def _prompt_cache(raw: dict, problems: Problems) -> PromptCacheSettings:
    get = problems.get
    return PromptCacheSettings(
        dir=get(v.directory, raw["prompt_cache_dir"], "prompt_cache_dir", default=default_prompt_cache_dir())
        if "prompt_cache_dir" in raw else default_prompt_cache_dir(),
        max_bytes=get(v.size, raw.get("prompt_cache_max", _DEFAULTS["prompt_cache_max"]), "prompt_cache_max",
                      default=DEFAULT_PROMPT_CACHE_MAX),
        min_tokens=get(v.positive_int, raw.get("prompt_cache_min_tokens", DEFAULT_PROMPT_CACHE_MIN_TOKENS),
                       "prompt_cache_min_tokens", default=DEFAULT_PROMPT_CACHE_MIN_TOKENS))


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


def _model(name: str, spec: Any, defaults: dict[str, Any], problems: Problems) -> Model | None:
    """The model, or None when its problems are recorded."""
    key = f"models.{name}"
    before = len(problems.found)
    spec = problems.get(_spec, name, spec, key, default=None)
    if spec is None:
        return None
    get = problems.get
    get(v.reject_unknown, spec, key + ".", _MODEL_KEYS, schema.LLAMA_SWAP_MODEL, default=None)
    unit, cmd = get(_unit_or_cmd, name, spec, key, default=(None, None))
    url = get(v.url, spec["url"], f"{key}.url", default=None) if "url" in spec else defaults["url"]
    if cmd is not None and url is not None:
        get(command.check_port, cmd, url, f"{key}.cmd", default=None)
    memory, memory_auto = get(mem.model_memory, spec, key, defaults["budget_set"], default=(None, False))
    model = Model(
        name=name, unit=unit or "", url=url or "", aliases=get(_aliases, spec.get("aliases", []), key, default=()),
        cmd=cmd, memory=memory, memory_auto=memory_auto,
        repair_tool_calls=get(v.boolean, spec.get("repair_tool_calls", True), f"{key}.repair_tool_calls",
                              default=True),
        unlisted=get(v.boolean, spec.get("unlisted", False), f"{key}.unlisted", default=False),
        backend_api_key=get(k.backend_api_key, spec.get("backend_api_key"), f"{key}.backend_api_key", default=None),
        pin=get(v.boolean, spec.get("pin", False), f"{key}.pin", default=False),
        priority=get(_priority, spec.get("priority", 0), f"{key}.priority", default=0),
        **_overrides(spec, key, defaults, problems))
    return model if len(problems.found) == before else None


def _spec(name: str, spec: Any, key: str) -> dict:
    _check_name(name, key)
    if isinstance(spec, str):
        spec = {"unit": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: must be a unit name or a mapping (got {v.kind(spec)})")
    return spec


def _unit_or_cmd(name: str, spec: dict, key: str) -> tuple[str, tuple[str, ...] | None]:
    if ("unit" in spec) == ("cmd" in spec):
        raise ConfigError(f"{key}: needs exactly one of unit or cmd")
    if "cmd" in spec:
        return f"llm-switch-{_unit_escape(name)}.service", command.argv(spec["cmd"], f"{key}.cmd")
    unit = spec["unit"]
    if not isinstance(unit, str) or not _UNIT_NAME.match(unit):
        raise ConfigError(f"{key}.unit: must end in .service (got {unit!r})")
    return unit, None


def _aliases(aliases: Any, key: str) -> tuple[str, ...]:
    if isinstance(aliases, str):
        listed = ", ".join(a.strip() for a in aliases.split(",") if a.strip())
        raise ConfigError(f"{key}.aliases: must be a list, such as [{listed}] (got {aliases!r})")
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{key}.aliases: must be a list of names")
    if bad := next((a for a in aliases if not a.isprintable()), None):
        raise ConfigError(f"{key}.aliases: {bad!r} must not hold control characters")
    return tuple(aliases)


def _overrides(spec: dict, key: str, defaults: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """The settings a model may set for itself, else the global ones."""
    convert = {"health_timeout": v.duration, "min_loaded": v.duration, "idle_unload": v.optional_duration,
               "prompt_cache": v.boolean, "readahead": v.boolean,
               "loading_progress": lambda value, at: v.one_of(value, at, LOADING_PROGRESS)}
    return {name: problems.get(fn, spec[name], f"{key}.{name}", default=defaults[name]) if name in spec
            else defaults[name] for name, fn in convert.items()}


def _priority(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: must be an integer, higher goes first (got {value!r})")
    return value


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


def _unit_escape(name: str) -> str:
    """Model names may hold characters a unit name cannot: escape each byte of those as systemd
    does (`\\x2b` for `+`); the characters allowed in unit names stay as they are."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in ":-_.") else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in name
    )
