"""`memory_budget: auto`: the budget device's total less `memory_reserve` (issue 22, item 4)."""

from __future__ import annotations

from .breakdown import DeviceMemory

DEFAULT_RESERVE = 512 << 20  # 0.5G


def mem_total(meminfo: str) -> int | None:
    """MemTotal from /proc/meminfo's text, in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
            except (IndexError, ValueError):
                return None
    return None


def auto_budget(device: str, reserve: int, *, breakdown: dict[str, DeviceMemory] | None = None,
                nvml_total: int | None = None, meminfo: str | None = None) -> tuple[int | None, str]:
    """(budget in bytes or None, where it came from): the device's `total` from a breakdown, else
    NVML's total for a GPU, else MemTotal for Host; less `reserve`."""
    row = (breakdown or {}).get(device)
    if row is not None and row.total:
        total, source = row.total, f"{device} total in llama-server's memory breakdown"
    elif device != "Host" and nvml_total:
        total, source = nvml_total, f"{device} total from NVML"
    elif device == "Host" and meminfo and (mt := mem_total(meminfo)):
        total, source = mt, "MemTotal in /proc/meminfo"
    else:
        return None, f"no total known for {device} yet (no breakdown from it, no NVML)"
    return max(total - reserve, 0), f"{source}, less memory_reserve"
