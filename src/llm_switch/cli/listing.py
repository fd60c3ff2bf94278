"""`llm-switch ps` (the running models, from the switch's /status) and `llm-switch ls` (every
configured model and alias, from the config file: it needs no running switch)."""

from __future__ import annotations

import sys
import time

from ..config import Config, format_size
from .client import Switch, read_config

UP = ("ready", "starting", "stopping")  # the states `ps` and `status` count as running
CONFIG_UNUSABLE = 2


def run_ps(args) -> int:
    switch = Switch.from_args(args)
    status = switch.json("GET", "/status", timeout=5)
    print(ps_table(status.get("models") or [], time.time()))
    return 0


def run_ls(args) -> int:
    config, note = read_config(args.config)
    if config is None:
        print(f"llm-switch ls: {note}", file=sys.stderr)
        return CONFIG_UNUSABLE
    print("\n".join(names(config)) if args.names else ls_table(config))
    return 0


def ps_table(models: list[dict], now: float) -> str:
    """Models that run, start or stop: state, memory, requests in flight and waiting, for how
    long they have been in that state. Pure."""
    rows = [(m["model"], m.get("state", "?") + (" (pinned)" if m.get("pin") else ""), _memory(m.get("memory") or {}), str(m.get("in_flight", 0)),
             str(m.get("waiting", 0)), _duration(now - m["since"]) if m.get("since") else "-")
            for m in models if m.get("state") in UP]
    if not rows:
        return "no model is running"
    return _table(("NAME", "STATE", "MEMORY", "IN FLIGHT", "WAITING", "FOR"), rows)


def ls_table(config: Config) -> str:
    """Every configured model: its aliases, declared memory and unit. Pure."""
    rows = [(m.name, ", ".join(m.aliases) or "-",
             "auto" if m.memory_auto else (format_size(m.memory) if m.memory else "-"),
             m.unit + (" (cmd)" if m.cmd else ""))
            for m in config.models.values()]
    if not rows:
        return f"no models in {config.path}"
    return _table(("NAME", "ALIASES", "MEMORY", "UNIT"), rows)


def names(config: Config) -> list[str]:
    """Every name a request may use, one per line: what shell completion offers."""
    return [n for m in config.models.values() for n in (m.name, *m.aliases)]


def _memory(memory: dict) -> str:
    """What it measurably uses (VRAM, else RAM), else what it declares."""
    if memory.get("measured_vram"):
        return f"{format_size(memory['measured_vram'])} VRAM"
    if memory.get("measured_ram"):
        return f"{format_size(memory['measured_ram'])} RAM"
    return f"{format_size(memory['declared'])} declared" if memory.get("declared") else "-"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (header, *rows))
