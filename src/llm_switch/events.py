"""Typed events and a small pub/sub: the scheduler publishes, observers subscribe.

Subscribers are plain callables run synchronously in publish order; they must not block (hand
slow work to a task or a queue). One that raises is logged and kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateChanged:
    model: str
    old: str
    new: str
    reason: str | None = None


@dataclass(frozen=True)
class SwitchDone:
    previous: tuple[str, ...]  # the models stopped to make room
    target: str
    stopped_s: float
    ready_s: float
    at: float  # unix time
    ok: bool

    def as_json(self) -> dict:
        return {"from": ", ".join(self.previous) or None, "to": self.target, "stopped_s": round(self.stopped_s, 3),
                "ready_s": round(self.ready_s, 3), "at": self.at, "ok": self.ok}


@dataclass(frozen=True)
class LoadProgress:
    model: str
    elapsed_s: float
    detail: str


@dataclass(frozen=True)
class MemoryMeasured:
    model: str
    declared: int | None
    ram: int | None   # the unit's MemoryCurrent
    vram: int | None  # from NVML, where there is an NVIDIA GPU


Event = StateChanged | SwitchDone | LoadProgress | MemoryMeasured


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[type | tuple[type, ...], Callable]] = []

    def subscribe(self, kinds: type | tuple[type, ...], callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for each event of `kinds`; returns the function that unsubscribes."""
        entry = (kinds, callback)
        self._subscribers.append(entry)
        return lambda: self._subscribers.remove(entry) if entry in self._subscribers else None

    def publish(self, event: Event) -> None:
        for kinds, callback in list(self._subscribers):
            if isinstance(event, kinds):
                try:
                    callback(event)
                except Exception:
                    log.exception("event subscriber %r failed on %s", callback, type(event).__name__)
