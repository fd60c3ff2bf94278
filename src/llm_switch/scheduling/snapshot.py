"""What the scheduler publishes: a frozen snapshot of every model, the switches and the budget.

`http` and `observe` read only this (`Scheduler.snapshot()`), never a `ModelRuntime`: a reader
cannot change the books by accident, and every view (/status, /running, /v1/models, Ollama's
/api/ps, the web page, metrics, the sd_notify line) shows one consistent moment.
Times: `since` and `at` are unix time; the others are the scheduler's clock (monotonic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..config import format_size
from ..events import MemoryMeasured, SwitchDone
from .policy import State


@dataclass(frozen=True)
class Transfer:
    """One save or restore of a model's slots (prompt_cache.py)."""

    slots: int
    tokens: int
    bytes: int
    seconds: float
    at: float  # unix time

    def text(self) -> str:
        return (f"{self.slots} slot{'s' if self.slots != 1 else ''} ({format_size(self.bytes)}, {self.tokens} tokens) "
                f"in {self.seconds:.2f} s")

    def as_json(self) -> dict:
        return {"slots": self.slots, "tokens": self.tokens, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "at": self.at}


@dataclass(frozen=True)
class CacheSnapshot:
    """One model's prompt cache: on, off (with the reason) or unknown (not started yet)."""

    state: str
    reason: str | None
    dir: str
    files: int = 0             # slot files on disk after the last save, restore or eviction
    bytes: int = 0
    saves: int = 0             # saves that wrote at least one slot, since the switch started
    restores: int = 0          # restores that read at least one slot
    save_s: float = 0.0        # seconds spent saving, in total
    restore_s: float = 0.0
    last_save: Transfer | None = None
    last_restore: Transfer | None = None

    def as_json(self) -> dict:
        return {"state": self.state, "reason": self.reason, "dir": self.dir, "files": self.files,
                "bytes": self.bytes, "saves": self.saves, "restores": self.restores,
                "last_save": self.last_save.as_json() if self.last_save else None,
                "last_restore": self.last_restore.as_json() if self.last_restore else None,
                "save_s_total": round(self.save_s, 3), "restore_s_total": round(self.restore_s, 3)}


@dataclass(frozen=True)
class ModelSnapshot:
    """One model as the scheduler sees it at `Snapshot.at`."""

    name: str
    unit: str
    url: str
    aliases: tuple[str, ...]
    declared: int | None        # the configured `memory`, bytes
    state: State
    since: float                # unix time of the last state change
    reason: str | None          # why it is in this state (a failure's message)
    in_flight: int
    waiting: int
    draining: bool
    queue_position: int | None  # 1: its waiting requests go next; None: none wait
    load_s: float | None        # the last successful load, start to ready
    failures: int               # failed starts in a row
    retry_in_s: float | None    # backing off: no start for this long
    ready_at: float
    idle_since: float | None
    idle_unload: float | None
    measured: MemoryMeasured | None = None
    prompt_cache: CacheSnapshot | None = None
    pin: bool = False           # never evicted nor unloaded for idleness; an explicit unload stops it
    priority: int = 0
    learned: int | None = None       # bytes llama-server reported on `device` (scheduling/learning.py)
    device: str | None = None        # the budget's device
    counted: int | None = None       # what the budget counts: declared, else learned; None runs alone
    learned_from: str | None = None  # where the learned figure came from

    @property
    def up(self) -> bool:
        return self.state.up

    def as_json(self, with_cache: bool = True) -> dict:
        """The /status, /running and /load shape of one model."""
        m = self.measured
        out = {
            "model": self.name, "unit": self.unit, "url": self.url, "state": str(self.state), "since": self.since,
            "reason": self.reason, "in_flight": self.in_flight, "waiting": self.waiting,
            "load_s": round(self.load_s, 3) if self.load_s is not None else None,
            "failures": self.failures, "pin": self.pin, "priority": self.priority,
            "retry_in_s": round(self.retry_in_s, 1) if self.retry_in_s is not None else None,
            "memory": {"declared": self.declared, "measured_ram": m.ram if m else None,
                       "measured_vram": m.vram if m else None, "learned": self.learned, "device": self.device,
                       "counted": self.counted, "learned_from": self.learned_from},
        }
        if with_cache and self.prompt_cache is not None:
            out["prompt_cache"] = self.prompt_cache.as_json()
        return out


@dataclass(frozen=True)
class Snapshot:
    """Every configured model, in config order, and what the switch as a whole shows."""

    at: float                   # the scheduler's clock when it was taken
    config_path: str | None
    listen: str
    memory_budget: int | None
    vram_note: str | None       # why there are no VRAM figures, where there are none
    models: Mapping[str, ModelSnapshot]
    switches: tuple[SwitchDone, ...]
    queued: int                 # requests waiting, all models
    memory_budget_from: str | None = None  # "config", or how an auto budget was taken

    @staticmethod
    def of(models: dict[str, ModelSnapshot], **rest) -> Snapshot:
        return Snapshot(models=MappingProxyType(dict(models)), **rest)

    @property
    def up(self) -> list[ModelSnapshot]:
        """The models whose units run (starting, ready or stopping): they hold memory."""
        return [m for m in self.models.values() if m.up]

    def used(self) -> int:
        """Counted bytes (declared, else learned) of the models that are up."""
        return sum(m.counted if m.counted is not None else m.declared or 0 for m in self.up)
