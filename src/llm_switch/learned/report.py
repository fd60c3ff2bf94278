"""One call for the scheduler after a model started (or stopped): what llama-server's log says it
takes, what `--fit` changed, and the figure the budget counts. Pure: the journal lines, the
declared size and the store come in; nothing here starts, stops or logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .breakdown import FitChange, first_gpu, parse_breakdown, parse_fit_changes
from .store import LearnedStore, file_identity

OVER_DECLARED = 1.10  # a learned figure this much over the declared one is logged (once)
_MODEL_FLAGS = ("-m", "--model")


@dataclass(frozen=True)
class Learned:
    devices: dict[str, int] = field(default_factory=dict)  # bytes per device (self, else model + context + compute)
    totals: dict[str, int] = field(default_factory=dict)  # each device's total, where the breakdown gives it
    first_gpu: str = "Host"  # memory_device's default
    fit_changes: tuple[FitChange, ...] = ()
    source: str = ""  # where the figures came from, or why there are none


def from_log(lines: list[str]) -> Learned:
    """The breakdown and the fit changes in a unit's journal lines (verbosity 4 prints both)."""
    table = parse_breakdown(lines)
    changes = tuple(parse_fit_changes(lines))
    if not table:
        return Learned(fit_changes=changes, source="no memory breakdown in the log (llama-server prints it at "
                       "log verbosity 4: LLAMA_ARG_LOG_VERBOSITY=4; an older build does not print it)")
    return Learned({name: row.learned for name, row in table.items()},
                   {name: row.total for name, row in table.items() if row.total},
                   first_gpu(table), changes, "llama-server's memory breakdown")


def counted(declared: int | None, learned: dict[str, int] | None, device: str) -> tuple[int | None, str | None]:
    """(the figure the budget counts for a model, a warning to log once or None). A declared
    `memory:` always wins; None: not known yet (the model runs alone)."""
    on_device = (learned or {}).get(device)
    if declared is None:
        return on_device, None
    if on_device is not None and on_device > declared * OVER_DECLARED:
        return declared, (f"llama-server reports {on_device / 2**30:.2f}G on {device}, more than the declared "
                          f"memory: {declared / 2**30:.2f}G (+{on_device / declared - 1:.0%}); the declared "
                          "figure is used")
    return declared, None


def remember(store: LearnedStore, name: str, identity: tuple[str | None, list[str]], learned: Learned) -> None:
    """Keep what a start taught, keyed by the model file and the unit's arguments."""
    model_file, args = identity
    if learned.devices and model_file:
        store.put(name, file_identity(model_file), args, learned.devices)


def recall(store: LearnedStore, name: str, identity: tuple[str | None, list[str]]) -> dict[str, int] | None:
    model_file, args = identity
    return store.get(name, file_identity(model_file) if model_file else None, args)


def identity_of(cmd: tuple[str, ...] | None, unit: str, config_home: str | None = None) -> tuple[str | None, list[str]]:
    """(the model file, the arguments) a model runs with: a cmd's argv, or for
    llama-server@NAME.service the lines of its models/NAME.env."""
    if cmd is not None:
        args = list(cmd)
        model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in _MODEL_FLAGS), None)
        return model, args
    if not (unit.startswith("llama-server@") and unit.endswith(".service")):
        return None, []
    home = config_home or os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    env_file = Path(home) / "llm-switch" / "models" / f"{unit[len('llama-server@'):-len('.service')]}.env"
    try:
        lines = [ln.strip() for ln in env_file.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError:
        return None, []
    model = next((ln.split("=", 1)[1].strip("'\"") for ln in lines if ln.startswith("LLAMA_ARG_MODEL=")), None)
    return model, lines
