"""The config as the rest of the switch sees it: frozen, checked once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .groups import AnyOf

DEFAULT_LISTEN = "127.0.0.1:3002"
DEFAULT_BACKEND = "http://127.0.0.1:3004"
DEFAULT_HEALTH_TIMEOUT = 300.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAX_JSON = 16 * 1024 * 1024
DEFAULT_MAX_WAIT = 600.0
DEFAULT_MAX_QUEUE = 256
DEFAULT_PROMPT_CACHE_MAX = 20 << 30
DEFAULT_PROMPT_CACHE_MIN_TOKENS = 512
DEFAULT_SHUTDOWN_GRACE = 30.0
LOADING_PROGRESS = ("reasoning", "comment", "off")  # what a waiting streamed chat completion is sent
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_READAHEAD_MARGIN = 2 << 30  # kept free beyond the file when reading a model ahead


def default_prompt_cache_dir() -> str:
    """$XDG_STATE_HOME/llm-switch/slots: what %S/llm-switch/slots is in a user unit."""
    return str(Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "llm-switch" / "slots")


@dataclass(frozen=True)
class Model:
    name: str
    unit: str  # the systemd unit: configured, or llm-switch-<name>.service for cmd models
    url: str
    aliases: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None  # argv of a transient unit
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    repair_tool_calls: bool = True
    memory: int | None = None  # declared bytes; None: exclusive (runs alone)
    memory_auto: bool = False  # `memory: auto`, or none under a budget: learned from llama-server's report
    unlisted: bool = False  # served, but left out of /v1/models (llama-swap's `unlisted`)
    min_loaded: float | None = None  # None: 3x the last load time, at least 5 s
    idle_unload: float | None = None  # None: never unloaded for idleness
    prompt_cache: bool = True  # save the slots at stop, restore them at start (where the backend can)
    loading_progress: str = "reasoning"  # one of LOADING_PROGRESS (http/progress.py)
    readahead: bool = True  # read its GGUF files into the page cache while a switch to it waits
    backend_api_key: str | None = field(default=None, repr=False)  # sent as Bearer to a llama-server --api-key
    pin: bool = False  # started with the switch, never evicted nor unloaded for idleness
    priority: int = 0  # waiting models of higher priority go first


@dataclass(frozen=True)
class PromptCacheSettings:
    """Where slot files live (`dir`/<model>/, the backend's --slot-save-path) and what is kept."""

    dir: str
    max_bytes: int = DEFAULT_PROMPT_CACHE_MAX  # all models' files together; least recently used go first
    min_tokens: int = DEFAULT_PROMPT_CACHE_MIN_TOKENS  # shorter prompts are not saved


@dataclass(frozen=True)
class ApiKey:
    """One key a client may send (`Authorization: Bearer KEY` or `x-api-key: KEY`). The secret is
    never logged or shown: `name` stands for it."""

    secret: str = field(repr=False)
    name: str  # from config, else `key-N`, N its index in api_keys (never its characters)
    models: frozenset[str] | None = None  # model names it may use; None: all, and the admin routes


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    models: dict[str, Model]
    max_body_bytes: int = DEFAULT_MAX_BODY
    path: str | None = None
    warnings: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # name or alias → model name
    memory_budget: int | None = None  # None: every model exclusive
    memory_budget_auto: bool = False  # `memory_budget: auto`: the device's total less memory_reserve
    memory_budget_from: str | None = None  # where the budget came from ("config", "MemTotal …")
    memory_device: str | None = None  # the budget's device; None: the first GPU in the breakdowns, else Host
    memory_reserve: int = 512 << 20  # kept free under an auto budget
    max_wait: float = DEFAULT_MAX_WAIT
    max_queue: int = DEFAULT_MAX_QUEUE
    preload: tuple[str, ...] = ()
    prompt_cache: PromptCacheSettings = field(default_factory=lambda: PromptCacheSettings(default_prompt_cache_dir()))
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE  # s requests in flight may finish after SIGTERM
    api_keys: tuple[ApiKey, ...] = ()  # none: every route is open (allowed on loopback only)
    allow_unauthenticated: bool = False  # no keys even off loopback (warned at every start)
    metrics_public: bool = False  # /metrics without a key
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # client connections at once; more get a 503 at once
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # s for a request's head to arrive (and idle keep-alive)
    max_json_bytes: int = DEFAULT_MAX_JSON  # a JSON body's limit (its parsed form takes ~25x its size)
    allowed_hosts: frozenset[str] = frozenset()  # Host names accepted beside loopback's (http/guard.py)
    cors_origins: frozenset[str] = frozenset()  # web origins whose pages may call the switch
    any_of: dict[str, AnyOf] = field(default_factory=dict)  # virtual models (config/groups.py)
    any_of_names: dict[str, str] = field(default_factory=dict)  # name or alias → virtual model's name
    readahead_margin: int = DEFAULT_READAHEAD_MARGIN  # read ahead only while MemAvailable > file + this

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def resolve(self, name: str) -> Model | None:
        model_name = self.names.get(name)
        return self.models[model_name] if model_name else None

    def group(self, name: str) -> AnyOf | None:
        """The virtual model (`any_of`) `name` or its alias names, if any."""
        group_name = self.any_of_names.get(name)
        return self.any_of[group_name] if group_name else None

    @property
    def pinned(self) -> tuple[str, ...]:
        return tuple(name for name, m in self.models.items() if m.pin)

    def known(self, only: frozenset[str] | None = None) -> str:
        """The served names (those in `only`, where given), for messages about an unknown one."""
        return ", ".join(name + (f" (aliases: {', '.join(m.aliases)})" if m.aliases else "")
                         for name, m in self.models.items() if only is None or name in only)
