"""A llama-swap config.yaml as an llm-switch config: what maps, and why each other key does not.

    cmd (macros and ${PORT} expanded) → cmd: (a transient unit), env → /usr/bin/env VAR=… cmd
    proxy → url            aliases (names or {id: …}) → aliases        ttl, globalTTL → idle_unload
    unlisted → unlisted    healthCheckTimeout → health_timeout         checkEndpoint /health → as is
    sendLoadingState → loading_progress                 hooks.on_startup.preload → preload
    apiKeys → api_keys ("${env.X}" → {key_env: X})      filters.setParamsByID keys → aliases
    groups: swap: true + exclusive: true → the model runs alone (no memory);
            swap: true + exclusive: false → memory: auto, the members share one port (never together);
            swap: false → memory: auto, a port each (together while the budget allows)
    matrix: a set written as an AND of alternatives ((a | b) & c) → the same with slots for groups;
            any other set, and models in no set, run alone

Pure: `convert` takes the text, the environment and a `which` for program paths.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from . import llama_swap_macros as mx
from .model_files import LOG_VERBOSITY

DEFAULT_START_PORT = 5800
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")  # config/load.py's model names
_JOURNAL = "the switch logs to the journal (journalctl --user -u llm-switch); it has no such setting"
TOP_REASONS = {
    "logRequests": _JOURNAL, "logLevel": _JOURNAL, "logTimeFormat": _JOURNAL, "logToStdout": _JOURNAL,
    "metricsMaxInMemory": "the switch keeps no request log in memory; /metrics has Prometheus counters",
    "captureBuffer": "the switch captures no request or response bodies",
    "store": "the switch keeps no activity database",
    "ui": "the switch's web page has no activity table or session ids",
    "performance": "the switch polls no system statistics",
    "includeAliasesInList": "/v1/models lists each model once, its aliases in its `aliases` field",
    "unloadTimeout": "a unit that does not stop in time gets SIGKILL from systemd (TimeoutStopSec)",
    "upstream": "/upstream/{model}/… always loads its model; there are no ignorePaths",
    "profiles": "the switch has no runtime pins; use aliases",
    "selectors": "the switch has no virtual model ids chosen per request; use aliases",
    "peers": "the switch serves this machine's models; put LiteLLM in front for others "
             "(llm-switch litellm-config)",
}
MODEL_REASONS = {
    "name": "/v1/models shows no display name", "description": "/v1/models shows no description",
    "metadata": "/v1/models shows no metadata", "capabilities": "/v1/models shows no capabilities",
    "cmdStop": "the switch stops the unit (SIGTERM, then SIGKILL); docker run --rm containers stop with it",
    "useModelName": "requests reach the backend with the model name the client sent",
    "concurrencyLimit": "the switch limits no model's parallel requests (llama-server's slots do)",
    "timeouts": "the switch waits for a backend as long as its answer takes",
    "compat": "the switch loads no model for a websocket",
    "unloadTimeout": TOP_REASONS["unloadTimeout"],
}
_DONE_TOP = {"models", "macros", "startPort", "healthCheckTimeout", "globalTTL", "sendLoadingState", "apiKeys",
             "hooks", "routing", "groups", "matrix"}
_DONE_MODEL = {"cmd", "proxy", "aliases", "ttl", "env", "unlisted", "checkEndpoint", "sendLoadingState", "macros",
               "filters"}


@dataclass
class Imported:
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # "key: why it is not carried over"

    def text(self, source: str) -> str:
        head = (f"# llm-switch config imported from the llama-swap config {source} by `llm-switch import`.\n"
                "# What could not be carried over was listed when it ran. Check it: llm-switch check --config FILE\n")
        return head + yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False, width=10_000)


@dataclass
class _Slot:
    auto: bool = False  # memory: auto (runs beside others under the budget)
    leader: str | None = None  # the member whose port the slot shares; None: a port of its own


def convert(text: str, environ: Mapping[str, str], which: Callable[[str], str | None]) -> Imported:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ConfigError("not a llama-swap config: it needs a `models:` mapping")
    out = Imported({})
    keys = _api_keys(raw.get("apiKeys"), environ, out.notes)
    raw = mx.expand_env({k: v for k, v in raw.items() if k != "apiKeys"}, environ, "config")
    macros = mx.macro_list(raw.get("macros"), "macros")
    top = {k: mx.substitute(v, macros) for k, v in raw.items() if k not in ("models", "macros")}
    slots = _slots(top, sorted(raw["models"]), out.notes)
    models = _models(raw["models"], macros, top, slots, which, out.notes)
    if not models:
        raise ConfigError("no model could be carried over (see the reasons above)")
    _top_level(out, top, models, keys)
    for key in top:
        if key not in _DONE_TOP:
            out.notes.append(f"{key}: {TOP_REASONS.get(key, 'not a key this importer knows')}")
    return out


def _api_keys(value: Any, environ: Mapping[str, str], notes: list[str]) -> list[Any]:
    """apiKeys: `${env.X}` stays in the environment (key_env), a literal key is kept where the
    switch accepts it (16 printable characters at least)."""
    out: list[Any] = []
    for i, key in enumerate(value or []):
        m = mx.ENV_MACRO.fullmatch(str(key).strip())
        if m:
            out.append({"key_env": m[1], "name": m[1]})
            if m[1] not in environ:
                notes.append(f"apiKeys[{i}]: set {m[1]} in llm-switch.service's environment "
                             "(systemctl --user edit llm-switch: Environment=…)")
        elif isinstance(key, str) and len(key) >= 16 and re.fullmatch(r"[\x21-\x7e]+", key):
            out.append({"key": key, "name": f"llama-swap-{i}"})
        else:
            notes.append(f"apiKeys[{i}]: too short or not printable ASCII for the switch (16 characters at "
                         "least; make one with: openssl rand -hex 24); left out")
    return out


def _routing(top: dict, notes: list[str]) -> tuple[str, Any]:
    """("group", groups) or ("matrix", matrix), from routing.router or the legacy top-level keys."""
    routing = top.get("routing") or {}
    router = routing.get("router") or {}
    settings = router.get("settings") or {}
    scheduler = routing.get("scheduler")
    if scheduler:
        notes.append("routing.scheduler: requests wait in one queue, served by model oldest first (no "
                     "priorities); the priorities are not carried over")
    for key in set(routing) - {"router", "scheduler"}:
        notes.append(f"routing.{key}: not a key this importer knows")
    if "groups" in top or "matrix" in top:
        return ("matrix", top["matrix"]) if top.get("matrix") else ("group", top.get("groups") or {})
    use = router.get("use") or "group"
    unused = "matrix" if use == "group" else "groups"
    if settings.get(unused):
        notes.append(f"routing.router.settings.{unused}: not in use (routing.router.use is {use}); not "
                     "carried over")
    return (use, settings.get("matrix") or {}) if use == "matrix" else ("group", settings.get("groups") or {})


def _slots(top: dict, ids: list[str], notes: list[str]) -> dict[str, _Slot]:
    kind, spec = _routing(top, notes)
    slots = {i: _Slot() for i in ids}
    if kind == "matrix":
        return _matrix_slots(spec, slots, notes)
    for name, group in (spec or {}).items():
        members = [m for m in group.get("members") or [] if m in slots]
        swap, exclusive = group.get("swap", True), group.get("exclusive", True)
        if group.get("persistent"):
            notes.append(f"groups.{name}.persistent: the switch has no pinned models; its members may be "
                         "unloaded for others (idle_unload stays off)")
        if swap and exclusive:
            continue  # run alone, as every model without memory does
        if not swap and exclusive:
            notes.append(f"groups.{name}.exclusive: its members run beside each other, but also beside other "
                         "models while the memory budget allows")
        for m in members:
            slots[m] = _Slot(True, members[0] if swap else None)
    return slots


def _matrix_slots(matrix: dict, slots: dict[str, _Slot], notes: list[str]) -> dict[str, _Slot]:
    names = {str(k): str(v) for k, v in (matrix.get("vars") or {}).items()}
    sets = {str(k): str(v) for k, v in (matrix.get("sets") or {}).items()}
    if matrix.get("evict_costs"):
        notes.append("matrix.evict_costs: the switch stops the least recently used models first")
    seen: dict[str, str] = {}
    carried = []
    for name, dsl in sets.items():
        found = mx.set_slots(dsl, sets, names)
        members = [m for slot in found or [] for m in slot]
        if found is not None and len(found) < 2:
            continue  # one model at a time: as every model may run alone
        if found is None or len(set(members)) != len(members) or any(m in seen for m in members):
            notes.append(f"matrix.sets.{name} ({dsl}): not an AND of alternatives used by no other set, so "
                         "it cannot be a memory budget; its models run alone")
            for m in members:
                seen.setdefault(m, name)
            continue
        for m in members:
            seen[m] = name
        carried.append(name)
        for slot in found:
            for m in (m for m in slot if m in slots):
                slots[m] = _Slot(True, slot[0] if len(slot) > 1 else None)
    if len(carried) > 1:
        notes.append(f"matrix.sets {', '.join(carried)}: models of different sets may also run side by side "
                     "while the memory budget allows")
    return slots


def _models(models: dict, macros: list, top: dict, slots: dict[str, _Slot],
            which: Callable[[str], str | None], notes: list[str]) -> dict[str, dict]:
    """Each model with its macros and ${PORT} expanded (ports from startPort, in model-id order as
    llama-swap assigns them; a slot's members share its leader's)."""
    next_port = int(top.get("startPort") or DEFAULT_START_PORT)
    ports: dict[str, int] = {}
    out: dict[str, dict] = {}
    for mid in sorted(models):
        spec = models[mid] if isinstance(models[mid], dict) else {}
        own = mx.macro_list(spec.get("macros"), f"models.{mid}.macros")
        scope = mx.merged(mid, macros, own)
        spec = mx.substitute({k: v for k, v in spec.items() if k != "macros"}, scope)
        by_id = (spec.get("filters") or {}).get("setParamsByID")
        if isinstance(by_id, dict):  # llama-swap expands macros in these keys too
            spec["filters"]["setParamsByID"] = {mx.substitute(str(k), scope): v for k, v in by_id.items()}
        spec.setdefault("proxy", "http://localhost:${PORT}")
        if "${PORT}" in str(spec["proxy"]) and "${PORT}" not in str(spec.get("cmd", "")):
            notes.append(f"models.{mid}.proxy: uses ${{PORT}} (the default proxy does) but cmd does not; "
                         "llama-swap refuses this too; left out")
            continue
        if "${PORT}" in str(spec.get("cmd", "")):
            leader = slots[mid].leader or mid
            if leader not in ports:
                ports[leader] = next_port
                next_port += 1
            spec = mx.substitute(spec, [("PORT", ports.setdefault(mid, ports[leader]))])
        model = _model(mid, spec, slots[mid], which, notes)
        if model is not None:
            out[mid] = model
    for mid in models:  # back in the config's own order
        if mid in out:
            out[mid] = out.pop(mid)
    return out


def _model(mid: str, spec: dict, slot: _Slot, which: Callable[[str], str | None], notes: list[str]) -> dict | None:
    where = f"models.{mid}"
    if not _NAME.fullmatch(mid):
        notes.append(f"{where}: not a model name the switch accepts (a letter or digit first, no spaces); left out")
        return None
    unresolved = mx.leftover({k: v for k, v in spec.items() if k in ("cmd", "proxy", "env")})
    if unresolved:
        notes.append(f"{where}: unknown macro ${{{unresolved[0]}}} (llama-swap would refuse it too); left out")
        return None
    try:
        argv = _argv(spec.get("cmd"), spec.get("env") or [], which, where)
        url = _url(spec["proxy"], where)
    except ConfigError as e:
        notes.append(f"{e.message}; the model is left out")
        return None
    out: dict[str, Any] = {"cmd": shlex.join(argv), "url": url}
    aliases = _aliases(spec, where, notes)
    if aliases:
        out["aliases"] = aliases
    ttl = spec.get("ttl", -1)
    if isinstance(ttl, int) and ttl >= 0:
        out["idle_unload"] = f"{ttl}s" if ttl else "off"
    if slot.auto:
        out["memory"] = "auto"
    if spec.get("unlisted"):
        out["unlisted"] = True
    if "sendLoadingState" in spec:
        out["loading_progress"] = "reasoning" if spec["sendLoadingState"] else "off"
    check = str(spec.get("checkEndpoint", "/health")).strip()
    if check != "/health":
        notes.append(f"{where}.checkEndpoint: the switch waits for /health to answer 200 (got {check!r}); a "
                     "backend without /health never turns ready")
    for key in spec:
        if key not in _DONE_MODEL:
            notes.append(f"{where}.{key}: {MODEL_REASONS.get(key, 'not a key this importer knows')}")
    return out


def _argv(cmd: Any, env: list, which: Callable[[str], str | None], where: str) -> list[str]:
    """cmd as llama-swap runs it: comment lines out, continuation lines joined; the program by its
    absolute path; env as /usr/bin/env VAR=value before it (env execs the program: it stays the
    unit's main process)."""
    if not isinstance(cmd, str) or not cmd.strip():
        raise ConfigError(f"{where}.cmd: missing (llama-swap needs one too)")
    lines = [ln for ln in cmd.replace("\\\n", " ").splitlines() if not ln.strip().startswith("#")]
    try:
        argv = shlex.split(" ".join(lines))
    except ValueError as e:
        raise ConfigError(f"{where}.cmd: cannot split it into arguments ({e})") from None
    program = argv[0] if argv[0].startswith("/") else which(argv[0])
    if not program:
        raise ConfigError(f"{where}.cmd: program {argv[0]!r} is not on PATH here")
    env = [str(e) for e in env]
    bad = [e for e in env if "=" not in e]
    if bad:
        raise ConfigError(f"{where}.env: {bad[0]!r} is not NAME=value")
    if "llama-server" in program.rsplit("/", 1)[-1] and not any(e.startswith("LLAMA_ARG_LOG_VERBOSITY=")
                                                                  for e in env):
        env.append(f"LLAMA_ARG_LOG_VERBOSITY={LOG_VERBOSITY}")  # the memory breakdown and the load phases
    return (["/usr/bin/env", *env] if env else []) + [program, *argv[1:]]


def _url(proxy: Any, where: str) -> str:
    parts = urlsplit(str(proxy))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{where}.proxy: {proxy!r} is not an http(s) URL without a path, which the switch "
                          "needs")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    host = "127.0.0.1" if host == "localhost" else host  # where llama-server listens by default
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _aliases(spec: dict, where: str, notes: list[str]) -> list[str]:
    """aliases as names or {id: …} objects, and the setParamsByID keys llama-swap adds as aliases."""
    out: list[str] = []
    for i, alias in enumerate(spec.get("aliases") or []):
        if isinstance(alias, dict):
            if "id" not in alias:
                notes.append(f"{where}.aliases[{i}]: an alias object without id; left out")
                continue
            for key in alias:
                if key != "id":
                    notes.append(f"{where}.aliases[{i}].{key}: the switch's aliases are names only")
            alias = alias["id"]
        out.append(str(alias))
    filters = spec.get("filters") or {}
    for key in filters:
        if key == "setParamsByID":
            mid = where.split(".", 1)[1]
            out += [str(k) for k in filters[key] if str(k) != mid and str(k) not in out]
            notes.append(f"{where}.filters.setParamsByID: its ids are aliases now; the parameters are not set "
                         "(request bodies are relayed as they are)")
        else:
            notes.append(f"{where}.filters.{key}: request bodies are relayed as they are")
    return out


def _top_level(out: Imported, top: dict, models: dict[str, dict], keys: list) -> None:
    config = out.config
    timeout = top.get("healthCheckTimeout")
    if isinstance(timeout, int) and timeout > 0:
        config["health_timeout"] = max(timeout, 15)  # llama-swap's floor
    ttl = top.get("globalTTL")
    if isinstance(ttl, int) and ttl > 0:
        config["idle_unload"] = f"{ttl}s"
    if "sendLoadingState" in top:
        config["loading_progress"] = "reasoning" if top["sendLoadingState"] else "off"
    if any(m.get("memory") == "auto" for m in models.values()):
        config["memory_budget"] = "auto"
    if keys:
        config["api_keys"] = keys
    names = {a: mid for mid, m in models.items() for a in (mid, *m.get("aliases", []))}
    preload = []
    hooks = top.get("hooks") or {}
    for key in set(hooks) - {"on_startup"} | set(hooks.get("on_startup") or {}) - {"preload"}:
        out.notes.append(f"hooks: {key}: not a hook this importer knows")
    for name in (hooks.get("on_startup") or {}).get("preload") or []:
        if str(name).strip() in names:
            preload.append(names[str(name).strip()])
        else:
            out.notes.append(f"hooks.on_startup.preload: {name!r} is no model carried over; left out")
    if preload:
        config["preload"] = preload
    config["models"] = models
