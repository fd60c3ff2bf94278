"""Memory learned from llama-server's own report, for the budget (docs/design.md, "Who may run
together"; issue 22): after a start, read the unit's journal for its memory breakdown and what
`--fit` changed, keep the figure per model file and arguments (learned/store.py), and say which
figure the budget counts. The budget's device and, for `memory_budget: auto`, its total come
from the breakdowns too. The parsing and the store are learned/'s; this is their use."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import Config, Model, format_size
from ..events import MemoryMeasured
from ..learned import report
from ..learned.budget import auto_budget
from ..learned.breakdown import DeviceMemory
from ..learned.store import LearnedStore

log = logging.getLogger(__name__)

StartLog = Callable[[str, float], Awaitable[list[str]]]  # (unit, unix time of the start) → its lines
# llama-server logs the breakdown while `--fit` sizes the model, before it listens: once this line
# is in the journal, so is the breakdown (journald may take a moment to get there)
_LISTENING = re.compile(r"listening on http|server is listening|all slots are idle")
_LOG_WAITS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.5)  # s between reads of a start's log: journald lags
_NO_JOURNAL = 2  # reads that found no line at all: the unit does not log to the journal


@dataclass(frozen=True)
class Figure:
    """What a model takes per device, and where that came from."""

    devices: dict[str, int]
    source: str


class Learning:
    """The learned figures of every model, the budget's device and an auto budget's total.
    `store` None: nothing is kept across restarts (the simulation)."""

    def __init__(self, config: Config, read_log: StartLog, store: LearnedStore | None,
                 gpu_total: Callable[[str], int | None] = lambda device: None) -> None:
        self.config = config
        self._read_log, self._store, self._gpu_total = read_log, store, gpu_total
        self._figures: dict[str, Figure] = {}
        self._gpu: str | None = None  # the first GPU a breakdown named
        self._totals: dict[str, int] = {}  # each device's total, from the breakdowns
        self._warned: set[str] = set()

    @property
    def device(self) -> str:
        return self.config.memory_device or self._gpu or "Host"

    def budget(self) -> tuple[int | None, str | None]:
        """(the budget in bytes, where it came from)."""
        config = self.config
        if not config.memory_budget_auto or self.device == "Host":
            return config.memory_budget, config.memory_budget_from  # Host's MemTotal was read with the config
        total = self._totals.get(self.device)
        rows = {self.device: DeviceMemory(self.device, total, None, None, 0, 0, 0, None)} if total else {}
        return auto_budget(self.device, config.memory_reserve, breakdown=rows, nvml_total=self._gpu_total(self.device))

    def learned(self, name: str) -> int | None:
        """The learned bytes of `name` on the budget's device."""
        figure = self._figures.get(name)
        return figure.devices.get(self.device) if figure else None

    def counted(self, model: Model) -> int | None:
        """The figure the budget counts for `model` (a declared `memory:` wins); None: runs alone."""
        figure = self._figures.get(model.name)
        bytes_, warning = report.counted(model.memory, figure.devices if figure else None, self.device)
        if warning and model.name not in self._warned:
            self._warned.add(model.name)
            log.warning("%s: %s", model.name, warning)
        return bytes_

    def recall(self, model: Model) -> None:
        """Take what an earlier run of the switch learned, if the file and arguments are the same."""
        if self._store is None:
            return
        devices = report.recall(self._store, model.name, report.identity_of(model.cmd, model.unit))
        if devices:
            self._figures[model.name] = Figure(devices, "llama-server's memory breakdown (kept from an earlier start)")
        elif model.name in self._figures and self._figures[model.name].source.startswith("llama-server"):
            del self._figures[model.name]  # the file or the arguments changed
            log.info("%s: its model file or arguments changed; its learned memory is dropped", model.name)

    def forget(self, name: str) -> None:
        self._figures.pop(name, None)
        self._warned.discard(name)

    def source(self, name: str) -> str | None:
        figure = self._figures.get(name)
        return figure.source if figure else None

    async def learn(self, model: Model, started: float, measured: MemoryMeasured | None) -> None:
        """After `model` started (at unix time `started`): its breakdown, else what was measured."""
        lines = await self._start_log(model.unit, started)
        learned = report.from_log(lines)
        for change in learned.fit_changes:
            log.warning("%s: llama-server's --fit changed a setting to fit the memory free at its start: %s; "
                        "give it a smaller context or fewer GPU layers, or stop what runs beside it, to keep "
                        "what you set", model.name, change.describe())
        if learned.devices:
            self._gpu = self._gpu or (learned.first_gpu if learned.first_gpu != "Host" else None)
            self._totals.update(learned.totals)
            self._figures[model.name] = Figure(learned.devices, learned.source)
            if self._store is not None:
                report.remember(self._store, model.name, report.identity_of(model.cmd, model.unit), learned)
        elif (fallback := self._measured(measured)) is not None:
            self._figures[model.name] = Figure(fallback, f"measured: {learned.source}")
        else:
            log.info("%s: memory not learned: %s, and nothing was measured", model.name, learned.source)
            return
        figure = self._figures[model.name]
        log.info("%s: learned memory %s, from %s", model.name,
                 ", ".join(f"{format_size(b)} on {d}" for d, b in figure.devices.items()), figure.source)

    def _measured(self, measured: MemoryMeasured | None) -> dict[str, int] | None:
        """What the switch measures today, by device: RAM on Host, VRAM on the budget's GPU."""
        if measured is None:
            return None
        out = {"Host": measured.ram} if measured.ram else {}
        if measured.vram and self.device != "Host":
            out[self.device] = measured.vram
        return out or None

    async def _start_log(self, unit: str, started: float) -> list[str]:
        """The unit's lines since its start, read again while journald has not caught up."""
        lines: list[str] = []
        for i, wait in enumerate(_LOG_WAITS):
            await asyncio.sleep(wait)
            lines = await self._read_log(unit, started)
            if any(_LISTENING.search(line) for line in lines) or (not lines and i >= _NO_JOURNAL):
                break  # there, or the unit logs elsewhere (a file): no journalctl every start for nothing
        return lines
