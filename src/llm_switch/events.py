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


@dataclass(frozen=True)
class RequestDone:
    """One request the switch answered: published by the HTTP layer once its answer is complete."""

    model: str | None  # the configured model it named; None for routes without one
    route: str
    status: int
    seconds: float  # the whole request, waiting for the model included
    first_byte_s: float | None = None  # until the backend's first byte of the answer reached the switch
    waited_s: float = 0.0  # for its model (a load or its turn in the queue)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tps: float | None = None  # prompt processing, tokens/s (llama-server's timings)
    generation_tps: float | None = None  # generation, tokens/s
    at: float = 0.0  # unix time it ended
    repaired: int = 0  # tool calls repaired (request history and answer)
    prompt_s: float | None = None  # llama-server's timings: prompt processing
    generation_s: float | None = None  # and generation

    def as_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


Event = StateChanged | SwitchDone | LoadProgress | MemoryMeasured | RequestDone


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
