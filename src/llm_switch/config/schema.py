"""Every key of config.yaml: its kind, default, unit and one example. The parser takes its key sets
and simple settings from here; docs/configuration.md and config.schema.json are generated from it
(config/reference.py), and tests/test_config_reference.py holds the three to one another."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # one of KINDS
    doc: str
    example: str  # a YAML value the parser accepts
    default: str | None = None  # a YAML value the parser reads as the default; None: see default_doc
    default_doc: str = ""  # the default in words, where it is no plain value
    choices: tuple[str, ...] = ()


_SIZE_RE = r"^\s*\d+(\.\d+)?\s*([KMGTkmgt]([iI]?[bB]|[iI])?|[bB])\s*$"
_DURATION_RE = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"
_SIZE = {"type": "string", "pattern": _SIZE_RE}
_DURATION = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": _DURATION_RE}]}
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_STRINGS_OR_ONE = {"anyOf": [_STRINGS, {"type": "string", "minLength": 1}]}

# kind: (the type in words, its unit, its JSON Schema)
KINDS: dict[str, tuple[str, str, dict]] = {
    "listen": ("string", "HOST:PORT", {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:]+\]|[^:\[\]]+):\d+$"}),
    "url": ("string", "http(s) URL, no path", {"type": "string", "pattern": r"^https?://[^/?#]+/?$"}),
    "unit": ("string", "systemd unit", {"type": "string", "pattern": r"\.service$"}),
    "cmd": ("string or list", "command line", {"anyOf": [{"type": "string", "minLength": 1},
                                                        {"type": "array", "items": {"type": ["string", "number"]},
                                                         "minItems": 1}]}),
    "size": ("size", "bytes: K, M, G, T (powers of 1024)", _SIZE),
    "size_auto": ("size or auto", "bytes: K, M, G, T (powers of 1024)",
                  {"anyOf": [_SIZE, {"const": "auto"}]}),
    "bytes": ("integer or size", "bytes (or K, M, G, T)", {"anyOf": [{"type": "integer", "minimum": 1}, _SIZE]}),
    "duration": ("duration", "seconds, or with ms, s, m, h", _DURATION),
    "duration_off": ("duration or off", "seconds, or with ms, s, m, h",
                     {"anyOf": [_DURATION, {"enum": ["off", "never", "no", False, 0]}]}),
    "count": ("integer", "", {"type": "integer", "minimum": 1}),
    "integer": ("integer", "", {"type": "integer"}),
    "port": ("integer", "TCP port", {"type": "integer", "minimum": 1, "maximum": 64999}),
    "bool": ("boolean", "", {"type": "boolean"}),
    "choice": ("string", "", {}),  # its enum comes from Key.choices
    "path": ("string", "absolute path or ~/…", {"type": "string", "pattern": r"^[~/]"}),
    "string": ("string", "", {"type": "string", "minLength": 1}),
    "names": ("list of strings", "", _STRINGS),
    "names_or_one": ("list of strings", "", _STRINGS_OR_ONE),
    "args": ("list of strings", "", {"anyOf": [{"type": "array", "items": {"type": ["string", "number"]}},
                                               {"type": "string"}]}),
    "api_keys": ("list", "", {"type": "array", "items": {"anyOf": [
        {"type": "string", "minLength": 16},
        {"type": "object", "additionalProperties": False,
         "properties": {"key": {"type": "string", "minLength": 16}, "key_file": {"type": "string"},
                        "key_env": {"type": "string"}, "name": {"type": "string"},
                        "models": _STRINGS_OR_ONE}}]}}),
    "models": ("mapping", "name: unit or settings", {}),  # built from MODEL (reference.py)
    "models_defaults": ("mapping", "", {}),  # built from DIR_DEFAULTS
}

TOP: tuple[Key, ...] = (
    Key("listen", "listen", "Where clients reach the switch. Off loopback it needs api_keys.", "0.0.0.0:3002",
        "127.0.0.1:3002"),
    Key("backend", "url", "Where a model's llama-server listens, unless the model sets its own url.",
        "http://127.0.0.1:3004", "http://127.0.0.1:3004"),
    Key("models", "models", "The models: name (what clients ask for) → a unit, or the settings below.",
        "{coder: llama-server@coder.service}", default_doc="required, unless models_dir is set"),
    Key("health_timeout", "duration", "How long a model may take to load before the request waiting "
        "for it gets a 504. A model may set its own.", "10m", "300"),
    Key("memory_budget", "size_auto", "Memory the models may take together: models whose memory fits run "
        "side by side. auto: the device's total less memory_reserve.", "7.5G",
        default_doc="none: each model runs alone"),
    Key("memory_device", "string", "The device whose memory memory_budget counts, as llama-server's memory "
        "breakdown names it.", "CUDA0", default_doc="the first GPU in the breakdowns, else Host"),
    Key("memory_reserve", "size", "Kept free under memory_budget: auto.", "1G", "512M"),
    Key("min_loaded", "duration", "A model loaded this long ago may not be stopped for another. A model may "
        "set its own.", "1m", default_doc="3× its last load time, at least 5 s"),
    Key("idle_unload", "duration_off", "Stop a model after it has served nothing this long. A model may set "
        "its own.", "30m", "off"),
    Key("max_wait", "duration", "How long a request may wait for its model before a 503.", "5m", "600"),
    Key("max_queue", "count", "Requests that may wait at once; more get a 503.", "64", "256"),
    Key("preload", "names_or_one", "Models (or aliases) loaded at start.", "[coder]", "[]"),
    Key("shutdown_grace", "duration", "How long requests in flight may finish after SIGTERM.", "1m", "30"),
    Key("prompt_cache", "bool", "Save a model's prompt cache (its slots) when it stops and restore it when "
        "it starts. A model may set its own.", "false", "true"),
    Key("prompt_cache_dir", "path", "Where the slot files live, one folder per model.",
        "~/.cache/llm-switch/slots", default_doc="$XDG_STATE_HOME/llm-switch/slots"),
    Key("prompt_cache_max", "size", "All models' slot files together; the least recently used go first.",
        "50G", "20G"),
    Key("prompt_cache_min_tokens", "count", "Prompts shorter than this are not saved.", "1024", "512"),
    Key("loading_progress", "choice", "What a streamed chat completion gets while its model loads. A model "
        "may set its own.", "comment", "reasoning", choices=("reasoning", "comment", "off")),
    Key("readahead", "bool", "Read a model's GGUF files into the page cache while a switch to it waits "
        "(behind a drain or min_loaded) and while an earlier preload loads. A model may set its own.",
        "false", "true"),
    Key("readahead_margin", "size", "Read ahead only while MemAvailable exceeds the file plus this, so the "
        "running model's pages stay in the cache.", "4G", "2G"),
    Key("api_keys", "api_keys", "Keys clients send (Authorization: Bearer KEY or x-api-key: KEY): a key, "
        "or {key | key_file | key_env, name, models}.",
        "[{key_file: ~/.config/llm-switch/api-key, name: lan}]", default_doc="none: no key needed (loopback only)"),
    Key("allow_unauthenticated", "bool", "Listen off loopback without api_keys (something else guards the "
        "port).", "true", "false"),
    Key("metrics_public", "bool", "Serve /metrics without a key.", "true", "false"),
    Key("max_connections", "count", "Client connections at once; more get a 503 at once.", "512", "256"),
    Key("header_timeout", "duration", "How long a request's head may take to arrive (and an idle "
        "keep-alive connection may stay).", "30s", "10"),
    Key("max_body_bytes", "bytes", "The largest request body.", "128M", "64M"),
    Key("max_json_bytes", "bytes", "The largest JSON request body (its parsed form takes ~25× its size).",
        "32M", "16M"),
    Key("allowed_hosts", "names_or_one", "Host names a browser may reach the switch as, beside loopback's "
        "and the listen address.", "[llm.home.arpa]", "[]"),
    Key("cors_origins", "names_or_one", "Web origins whose pages may call the switch.",
        "[http://localhost:8080]", "[]"),
    Key("models_dir", "path", "Every GGUF file under this folder is a model, named by its file stem; a "
        "model in models with the same name wins.", "~/models", default_doc="none"),
    Key("models_defaults", "models_defaults", "How models_dir's models run (the keys below).",
        "{ctx: 8192, memory: auto}", default_doc="none"),
)

MODEL: tuple[Key, ...] = (
    Key("unit", "unit", "The systemd --user unit that serves the model (exactly one of unit or cmd).",
        "llama-server@coder.service", default_doc="none"),
    Key("cmd", "cmd", "A command the switch runs as a transient unit instead (an absolute program path; "
        "its --port must be url's port).", "/usr/bin/llama-server -m /models/coder.gguf --port 3004",
        default_doc="none"),
    Key("url", "url", "Where this model's backend listens.", "http://127.0.0.1:3005", default_doc="backend"),
    Key("aliases", "names", "Other names clients may use.", "[coder, c]", "[]"),
    Key("health_timeout", "duration", "As health_timeout, for this model.", "15m", default_doc="health_timeout"),
    Key("memory", "size_auto", "The memory the model takes (counted against memory_budget). auto: learned "
        "from llama-server's memory breakdown.", "6.8G", default_doc="none: runs alone; auto under a memory_budget"),
    Key("min_loaded", "duration", "As min_loaded, for this model.", "2m", default_doc="min_loaded"),
    Key("idle_unload", "duration_off", "As idle_unload, for this model.", "10m", default_doc="idle_unload"),
    Key("prompt_cache", "bool", "As prompt_cache, for this model.", "false", default_doc="prompt_cache"),
    Key("loading_progress", "choice", "As loading_progress, for this model.", "off",
        default_doc="loading_progress", choices=("reasoning", "comment", "off")),
    Key("readahead", "bool", "As readahead, for this model.", "false", default_doc="readahead"),
    Key("repair_tool_calls", "bool", "Repair malformed tool calls in the model's answers.", "false", "true"),
    Key("unlisted", "bool", "Serve the model but leave it out of /v1/models.", "true", "false"),
    Key("backend_api_key", "string", "The key the model's llama-server was started with (--api-key), sent "
        "to it as Bearer.", "0123456789abcdef", default_doc="none"),
    Key("pin", "bool", "Keep the model loaded: started with the switch, never stopped to make room or for "
        "idleness (an explicit unload still stops it). Every other model must fit beside the pinned ones.",
        "true", "false"),
    Key("priority", "integer", "Waiting models of higher priority go first, and a waiting request of higher "
        "priority ends a lower-priority model's min_loaded window at once.", "10", "0"),
    Key("any_of", "names", "Makes this entry a virtual model (with only aliases beside it): a request for it "
        "goes to the first listed model that is ready, else starting, else one that fits beside the running "
        "ones, else the first.", "[coder-fast, coder-big]", default_doc="none"),
)

DIR_DEFAULTS: tuple[Key, ...] = (
    Key("ctx", "count", "llama-server's context size (-c).", "8192", default_doc="the file's own"),
    Key("args", "args", "More llama-server arguments.", "[-ngl, '99']", "[]"),
    Key("memory", "size_auto", "As a model's memory.", "auto", default_doc="none; auto under a memory_budget"),
    Key("llama_server", "path", "The llama-server to run.", "~/llama.cpp/build/bin/llama-server",
        default_doc="llama-server.env's LLAMA_SERVER, else llama-server on PATH"),
    Key("port", "port", "The first model's port; each next one takes the next port.", "3104",
        default_doc="backend's port + 100"),
)


def names(keys: tuple[Key, ...]) -> frozenset[str]:
    return frozenset(key.name for key in keys)


def defaults(keys: tuple[Key, ...]) -> dict[str, str]:
    """{name: default} of the keys whose default is a plain value."""
    return {key.name: key.default for key in keys if key.default is not None}


def _swap(key: str, here: str) -> str:
    return f"{key} is llama-swap's; here: {here}"


_IMPORT = "convert a llama-swap config with `llm-switch import`"
# llama-swap's keys, for a config copied from it: what llm-switch calls them (or why none is needed)
LLAMA_SWAP_TOP = {
    "healthCheckTimeout": _swap("healthCheckTimeout", "health_timeout"),
    "globalTTL": _swap("globalTTL", "idle_unload"),
    "ttl": _swap("ttl", "idle_unload"),
    "startPort": _swap("startPort", "models_defaults.port (for models_dir)"),
    "macros": f"llm-switch expands no macros; {_IMPORT}",
    "groups": _swap("groups", "memory_budget and each model's memory decide what runs side by side"),
    "hooks": _swap("hooks", "preload"),
    "logLevel": _swap("logLevel", "the switch logs to the journal (--debug for more)"),
}
LLAMA_SWAP_MODEL = {
    "ttl": _swap("ttl", "idle_unload"),
    "proxy": _swap("proxy", "url"),
    "checkEndpoint": _swap("checkEndpoint", "the switch waits for /health itself; leave it out"),
    "cmdStop": _swap("cmdStop", "the switch stops the unit itself; leave it out"),
    "env": _swap("env", "cmd: /usr/bin/env NAME=value /path/to/llama-server …"),
    "macros": f"llm-switch expands no macros; {_IMPORT}",
    "concurrencyLimit": _swap("concurrencyLimit", "llama-server's slots (--parallel) limit it"),
    "name": _swap("name", "aliases"),
    "description": _swap("description", "a # comment"),
    "useModelName": _swap("useModelName", "requests reach the backend with the name the client sent"),
}
