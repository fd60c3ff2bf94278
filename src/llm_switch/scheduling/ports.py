"""What scheduling uses of systemd and of the backends: small Protocols, so that the scheduler
runs against the real clients (units/systemd.py, backends/llama_server.py) in the daemon and
against in-process fakes under a virtual clock in tests/test_simulation.py."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..events import EventBus
from ..units.journal import journal_since, journal_tail
from ..units.systemd import ActiveState


class Units(Protocol):
    """The user manager: jobs that return once done (or raise a SwitchError), and unit states."""

    async def start(self, unit: str) -> None: ...
    async def start_transient(self, unit: str, argv: tuple[str, ...], description: str) -> None: ...
    async def stop(self, unit: str) -> None: ...
    async def active_states(self, units: list[str]) -> dict[str, ActiveState]: ...
    async def memory(self, unit: str) -> tuple[int | None, int | None]: ...
    async def failure(self, unit: str) -> str: ...
    def watch_units(self, callback: Callable[[str, ActiveState], None]) -> None: ...
    def on_reconnect(self, callback: Callable[[], None]) -> None: ...


class Health(Protocol):
    """A backend as the scheduler asks it: is it up (the HTTP status of /health, None when
    nothing answers), and which model it serves."""

    async def health(self, url: str, timeout: float) -> int | None: ...
    async def model_ids(self, url: str, timeout: float = 5.0) -> set[str] | None: ...
    def use_keys(self, keys: dict[str, str]) -> None: ...


class Vram(Protocol):
    """GPU memory of a process and a device's total (scheduling/memory.py `Gpu`); `note` says
    why there is none."""

    note: str | None

    def vram_of(self, pid: int | None) -> int | None: ...
    def total_of(self, device: str) -> int | None: ...


class NoVram:
    note: str | None = None

    def total_of(self, device: str) -> int | None:
        return None

    def vram_of(self, pid: int | None) -> int | None:
        return None


@dataclass(frozen=True)
class Parts:
    """What every ModelRuntime works with: one set, shared. `clock` is the one clock of all
    scheduling decisions (monotonic seconds; a virtual one in the simulation)."""

    units: Units
    backends: Health
    events: EventBus
    gpu: Vram = NoVram()
    clock: Callable[[], float] = time.monotonic
    journal: Callable[[str], Awaitable[list[str]]] = journal_tail
    start_log: Callable[[str, float], Awaitable[list[str]]] = journal_since  # a unit's lines since a unix time
