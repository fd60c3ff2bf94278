"""How much memory a running model takes: the unit's MemoryCurrent from systemd (or, where the
manager does no memory accounting, as on cgroup v1, the resident size of its main process) and,
where nvidia-ml-py and an NVIDIA GPU are present, the VRAM of its processes from NVML."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def rss_of(pid: int | None) -> int | None:
    """Resident bytes of process `pid`, from /proc; None when it is gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class Gpu:
    """NVML, opened once; `note` says why there are no VRAM figures where there are none."""

    def __init__(self) -> None:
        self.note: str | None = None
        self._nvml = None
        try:
            import pynvml  # the optional extra: pip install 'systemd-llm-switch[nvidia]'
        except ImportError:
            self.note = "VRAM not measured: nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
            self._count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            self.note = f"VRAM not measured: no NVIDIA GPU ({e})"
            return
        self._nvml = pynvml

    def total_of(self, device: str) -> int | None:
        """The total bytes of a CUDA device of llama-server's breakdown (`CUDA0`), or None.
        (NVML counts in PCI order; CUDA does too with CUDA_DEVICE_ORDER=PCI_BUS_ID.)"""
        if self._nvml is None or not device.startswith("CUDA") or not device[4:].isdigit():
            return None
        nv = self._nvml
        try:
            return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(int(device[4:]))).total)
        except nv.NVMLError as e:
            log.debug("NVML: %s", e)
            return None

    def vram_of(self, pid: int | None) -> int | None:
        """Bytes of GPU memory the process `pid` uses on all GPUs, or None when unknown."""
        if self._nvml is None or not pid:
            return None
        nv, used = self._nvml, 0
        try:
            for i in range(self._count):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid == pid and p.usedGpuMemory:
                        used += p.usedGpuMemory
        except nv.NVMLError as e:
            log.debug("NVML: %s", e)
            return None
        return used
