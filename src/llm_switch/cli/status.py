"""`llm-switch status`: what runs, starts or failed, the config in use, the last switches.

Asks the daemon (`GET /status`; `--json` prints its answer as is); when it does not answer, says
so as every subcommand does (cli/client.py) and asks the user manager over D-Bus about
llm-switch.service and the configured units instead.
"""

from __future__ import annotations

import asyncio
import json
import time

from ..config import Config, format_size
from ..errors import SwitchError
from .client import NotRunning, Switch
from .listing import UP

SERVICE = "llm-switch.service"


def run(args) -> int:
    switch = Switch.from_args(args)
    try:
        status = switch.json("GET", "/status", timeout=5)
    except NotRunning as e:
        code = e.report()
        if not args.json:  # a script reading --json gets nothing but the exit status
            print(_from_systemd(switch.config))
        return code
    print(json.dumps(status, indent=2) if args.json else render(status, switch.url, time.time()))
    return 0


# -- the daemon's view ------------------------------------------------------------------------

def render(status: dict, url: str, now: float) -> str:
    """The daemon's /status as text for a terminal."""
    lines = [f"llm-switch at {url}/v1", f"config: {status.get('config') or '(none)'}"]
    models = status.get("models") or []
    width = max((len(m["model"]) for m in models), default=0)
    up = [m for m in models if m.get("state") in UP]
    lines.append("running: " + (", ".join(f"{m['model']} ({m['state']})" for m in up) or "none"))
    if status.get("memory_budget"):
        source = f" ({status['memory_budget_from']})" if status.get("memory_budget_from") else ""
        lines.append(f"memory budget: {format_size(status['memory_budget'])}{source}")
    if status.get("vram_note"):
        lines.append(status["vram_note"])
    lines.append("models:")
    for m in models:
        since = m.get("since")
        when = f"  since {_clock(since)} ({_ago(now - since)})" if since and m.get("state") != "stopped" else ""
        line = f"  {m['model']:<{width}}  {m.get('state', '?'):<8}  {m.get('unit', '')}{when}"
        if memory := _memory_text(m.get("memory") or {}):
            line += f"  {memory}"
        if m.get("pin"):
            line += "  pinned"
        if m.get("state") == "failed" and m.get("reason"):
            line += f"\n  {'':<{width}}  {_first_line(m['reason'])}"
        lines.append(line)
    switches = status.get("switches") or []
    if switches:
        lines.append("last switches (newest last):")
        for s in switches[-10:]:
            lines.append(f"  {_clock(s.get('at'))}  {_switch_text(s)}")
    else:
        lines.append("no switch yet")
    return "\n".join(lines)


def _memory_text(memory: dict) -> str:
    """`memory 6.8G declared, 6.2G RAM measured`; empty when nothing is known."""
    declared, ram, vram = memory.get("declared"), memory.get("measured_ram"), memory.get("measured_vram")
    parts = [f"memory {format_size(declared)} declared" if declared else "memory not declared"]
    if memory.get("learned"):
        parts.append(f"{format_size(memory['learned'])} learned on {memory.get('device') or 'Host'}")
    measured = [f"{format_size(n)} {what}" for n, what in ((ram, "RAM"), (vram, "VRAM")) if n]
    if measured:
        parts.append(", ".join(measured) + " measured")
    if len(parts) == 1:
        return parts[0] if declared else ""
    return ", ".join(parts)


def _switch_text(s: dict) -> str:
    before, target = s.get("from"), s.get("to")
    stopped, ready = float(s.get("stopped_s") or 0), float(s.get("ready_s") or 0)
    parts = [f"{before or '–'} → {target}:"]
    if before:
        parts.append(f"stopped {before} in {stopped:.2f} s,")
    if s.get("ok", True):
        parts.append(f"{target} ready in {ready:.2f} s")
    else:
        parts.append(f"{target} FAILED after {ready:.2f} s")
    return " ".join(parts)


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "--:--:--"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


# -- systemd's view, when the daemon does not answer ------------------------------------------

def _from_systemd(config: Config | None) -> str:
    try:
        return asyncio.run(_ask_systemd(config))
    except SwitchError as e:
        return f"systemd: {e.message}"


async def _ask_systemd(config: Config | None) -> str:
    from ..units.systemd import ActiveState, Systemd

    systemd = Systemd(job_timeout=10)
    try:
        await asyncio.wait_for(systemd.connect(), 10)
        units = [SERVICE] + ([m.unit for m in config.models.values()] if config else [])
        states = await asyncio.wait_for(systemd.active_states(units), 10)
        lines = []
        service = states.get(SERVICE, ActiveState.INACTIVE)
        text = f"{SERVICE}: {service}"
        if service is ActiveState.FAILED:
            text += f" ({await systemd.failure(SERVICE)})"
        lines.append(text + "  (log: journalctl --user -u llm-switch)")
        if config is None:
            lines.append("no usable config: cannot tell which model units to ask about")
            return "\n".join(lines)
        lines.append(f"config: {config.path}")
        lines.append("models, as systemd sees them:")
        width = max(len(n) for n in config.models)
        for name, model in config.models.items():
            state = states.get(model.unit, ActiveState.INACTIVE)
            line = f"  {name:<{width}}  {str(state):<12}  {model.unit}"
            if state is ActiveState.FAILED:
                line += f"  ({await systemd.failure(model.unit)})"
            lines.append(line)
        return "\n".join(lines)
    except TimeoutError:
        return "systemd: the user manager did not answer within 10 s"
    finally:
        await systemd.close()
