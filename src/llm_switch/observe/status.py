"""One snapshot of the switch's state: what /status, /running, /v1/models and the sd_notify
STATUS line show are all views of it."""

from __future__ import annotations

import time

from ..config import format_size
from ..scheduling.model import ModelRuntime
from ..scheduling.policy import State
from ..scheduling.scheduler import Scheduler


def model_status(r: ModelRuntime, prompt_cache: dict | None = None) -> dict:
    m = r.memory
    out = {
        "model": r.name, "unit": r.model.unit, "url": r.model.url, "state": str(r.state), "since": r.since,
        "reason": r.reason, "in_flight": r.in_flight, "waiting": r.waiting,
        "load_s": round(r.load_s, 3) if r.load_s is not None else None,
        "failures": r.failures,
        "retry_in_s": round(wait, 1) if (wait := r.retry_at - time.monotonic()) > 0 else None,
        "memory": {"declared": r.model.memory,
                   "measured_ram": m.ram if m else None,
                   "measured_vram": m.vram if m else None},
    }
    if prompt_cache is not None:
        out["prompt_cache"] = prompt_cache
    return out


def snapshot(scheduler: Scheduler) -> dict:
    config = scheduler.config
    return {
        "config": config.path,
        "listen": config.listen,
        "memory_budget": config.memory_budget,
        "vram_note": scheduler.gpu.note,
        "models": [model_status(r, scheduler.prompt_cache.status(r)) for r in scheduler.models.values()],
        "switches": [s.as_json() for s in scheduler.switches],
    }


def running(scheduler: Scheduler) -> list[dict]:
    return [model_status(r) for r in scheduler.models.values() if r.state.up]


def status_line(scheduler: Scheduler) -> str:
    """For `systemctl --user status llm-switch`: what is loaded, and how the last switch went."""
    up = [f"{r.name} {r.state}" for r in scheduler.models.values() if r.state.up]
    failed = [r.name for r in scheduler.models.values() if r.state is State.FAILED]
    text = ", ".join(up) if up else "no model loaded"
    budget = scheduler.config.memory_budget
    if budget is not None:
        used = sum(r.model.memory or 0 for r in scheduler.models.values() if r.state.up)
        text += f" ({format_size(used)} of {format_size(budget)})"
    if failed:
        text += f"; failed: {', '.join(failed)}"
    if scheduler.switches:
        last = scheduler.switches[-1]
        text += (f"; last switch {', '.join(last.previous) or '–'} → {last.target} "
                 f"{'in' if last.ok else 'FAILED after'} {last.stopped_s + last.ready_s:.1f} s")
    return text
