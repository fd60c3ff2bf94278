"""`memory_budget: auto | SIZE`, `memory_device`, `memory_reserve` and a model's `memory: auto`
(issue 22). An `auto` budget is the budget device's total less the reserve: at load only Host's
is known (MemTotal); a GPU's comes from the first breakdown that names it (learned/budget.py)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..learned.budget import DEFAULT_RESERVE, auto_budget
from . import values as v

AUTO = "auto"


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def budget(raw: dict) -> dict[str, Any]:
    """The Config fields of the budget: memory_budget, memory_budget_auto, memory_budget_from,
    memory_device, memory_reserve."""
    reserve = v.size(raw["memory_reserve"], "memory_reserve") if "memory_reserve" in raw else DEFAULT_RESERVE
    device = raw.get("memory_device")
    if device is not None and (not isinstance(device, str) or not device.strip()):
        raise ConfigError(f"memory_device: must be a device name from llama-server's memory breakdown, "
                            f"such as CUDA0, Vulkan0 or Host (got {device!r})")
    value = raw.get("memory_budget")
    out = {"memory_device": device, "memory_reserve": reserve, "memory_budget_auto": False,
           "memory_budget_from": None, "memory_budget": None}
    if value is None:
        return out
    if not is_auto(value):
        return {**out, "memory_budget": v.size(value, "memory_budget"), "memory_budget_from": "config"}
    on = device or "Host"  # a GPU named by the first breakdown replaces Host (the scheduler's part)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            meminfo = f.read()
    except OSError:
        meminfo = None
    total, source = auto_budget(on, reserve, meminfo=meminfo) if on == "Host" else (
        None, f"{on}: its total comes with its first memory breakdown")
    return {**out, "memory_budget": total, "memory_budget_auto": True, "memory_budget_from": source}


def model_memory(spec: dict, key: str, budget_set: bool) -> tuple[int | None, bool]:
    """(declared bytes, learned automatically): `memory: auto`, or no memory under a budget."""
    value = spec.get("memory")
    if value is None:
        return None, budget_set
    if is_auto(value):
        return None, True
    return v.size(value, f"{key}.memory"), False
