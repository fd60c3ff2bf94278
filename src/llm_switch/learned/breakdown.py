"""llama-server's own report of what a model takes, per device, and of what `--fit` changed.

    common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
    common_memory_breakdown_print: |   - CUDA0 (RTX 4070)   | 12282 = 3000 + (8900 =  7800 +     900 +     200) +         382 |
    common_memory_breakdown_print: |   - Host               |                  550 =   393 +     128 +      28                |

A row gives `total = free + (self = model + context + compute) + unaccounted` for a device, and
only `self = model + context + compute` for Host. The figures are MiB. Lines may carry the log's
own prefix (a timestamp, a journal field); only the part from the function name on is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1 << 20
_HEADER = re.compile(r"common_memory_breakdown_print:\s*\|\s*memory breakdown \[MiB\]")
_ROW = re.compile(r"common_memory_breakdown_print:\s*\|\s*-\s*(?P<device>.+?)\s*\|(?P<figures>[^|]*)\|\s*$")
_NUMBER = re.compile(r"\d+")
_CTX = re.compile(r"context size reduced from (\d+) to (\d+)")
_LAYERS = re.compile(r"common_params_fit_impl:\s+-\s+(?P<device>.+?):\s+(\d+) layers,")
_FIT_SOURCE = ("common_params_fit_impl", "llama_params_fit_impl")


@dataclass(frozen=True)
class DeviceMemory:
    """One device's row, in bytes; None where the row leaves a column empty."""

    device: str  # "CUDA0 (NVIDIA GeForce RTX 4070)", "Vulkan0 (…)", "Host"
    total: int | None
    free: int | None
    self: int | None
    model: int
    context: int
    compute: int
    unaccounted: int | None

    @property
    def name(self) -> str:
        """The device without its description: `CUDA0`, `Host`."""
        return self.device.split(" (", 1)[0]

    @property
    def is_gpu(self) -> bool:
        return self.name != "Host" and not self.name.startswith("CPU")

    @property
    def learned(self) -> int:
        """What the model takes here: `self`, or model + context + compute where self is empty."""
        return self.self if self.self is not None else self.model + self.context + self.compute


def _row(device: str, figures: str) -> DeviceMemory | None:
    numbers = [int(n) * MIB for n in _NUMBER.findall(figures)]
    if len(numbers) == 7:  # total = free + (self = model + context + compute) + unaccounted
        total, free, self_, model, context, compute, unaccounted = numbers
        return DeviceMemory(device, total, free, self_, model, context, compute, unaccounted)
    if len(numbers) == 4:  # self = model + context + compute
        self_, model, context, compute = numbers
        return DeviceMemory(device, None, None, self_, model, context, compute, None)
    if len(numbers) == 3:
        model, context, compute = numbers
        return DeviceMemory(device, None, None, None, model, context, compute, None)
    return None


def parse_breakdown(lines: list[str]) -> dict[str, DeviceMemory]:
    """The last complete table in `lines`, by device name (`CUDA0`, `Host`); {} when there is none."""
    tables: list[dict[str, DeviceMemory]] = []
    for line in lines:
        if _HEADER.search(line):
            tables.append({})
        elif tables and (m := _ROW.search(line)) and (row := _row(m["device"], m["figures"])):
            tables[-1][row.name] = row
    complete = [t for t in tables if t]
    return complete[-1] if complete else {}


def first_gpu(table: dict[str, DeviceMemory]) -> str:
    """memory_device's default: the first GPU of the breakdown, else Host."""
    return next((name for name, row in table.items() if row.is_gpu), "Host")


@dataclass(frozen=True)
class FitChange:
    parameter: str  # "context size", "layers on CUDA0"
    new: str
    old: str | None = None  # None where the log does not say

    def describe(self) -> str:
        return f"{self.parameter} {self.old} → {self.new}" if self.old else f"{self.parameter} set to {self.new}"


def parse_fit_changes(lines: list[str]) -> list[FitChange]:
    """What `--fit` changed at start, in log order; [] when it left the parameters as given."""
    out: list[FitChange] = []
    for line in lines:
        if not any(src in line for src in _FIT_SOURCE):
            continue
        if m := _CTX.search(line):
            out.append(FitChange("context size", m[2], m[1]))
        elif m := _LAYERS.search(line):
            out.append(FitChange(f"layers on {m['device'].split(' (', 1)[0]}", m[2]))
    return out
