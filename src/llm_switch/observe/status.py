"""Views of the scheduler's snapshot (scheduling/snapshot.py): what /status, /running and the
sd_notify STATUS line show."""

from __future__ import annotations

from ..config import format_size
from ..scheduling.policy import State
from ..scheduling.snapshot import Snapshot


def snapshot(snap: Snapshot) -> dict:
    return {
        "config": snap.config_path,
        "listen": snap.listen,
        "memory_budget": snap.memory_budget,
        "memory_budget_from": snap.memory_budget_from,
        "vram_note": snap.vram_note,
        "models": [m.as_json() for m in snap.models.values()],
        "switches": [s.as_json() for s in snap.switches],
    }


def running(snap: Snapshot) -> list[dict]:
    return [m.as_json(with_cache=False) for m in snap.up]


def status_line(snap: Snapshot) -> str:
    """For `systemctl --user status llm-switch`: what is loaded, and how the last switch went."""
    up = [f"{m.name} {m.state}" for m in snap.up]
    failed = [m.name for m in snap.models.values() if m.state is State.FAILED]
    text = ", ".join(up) if up else "no model loaded"
    if snap.memory_budget is not None:
        text += f" ({format_size(snap.used())} of {format_size(snap.memory_budget)})"
    if failed:
        text += f"; failed: {', '.join(failed)}"
    if snap.switches:
        last = snap.switches[-1]
        text += (f"; last switch {', '.join(last.previous) or '–'} → {last.target} "
                 f"{'in' if last.ok else 'FAILED after'} {last.stopped_s + last.ready_s:.1f} s")
    return text
