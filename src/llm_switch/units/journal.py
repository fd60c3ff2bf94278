"""A unit's journal lines, read with journalctl (the one subprocess the switch runs)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator


def _argv(unit: str, lines: int, output: str, since: float | None = None) -> list[str]:
    # --user-unit, not --user -u: it also finds user units' lines kept in the system journal (a
    # volatile journal, or root's own manager)
    argv = ["journalctl", "--user-unit", unit, "-n", str(lines), "-o", output, "--no-pager", "-q"]
    if since is not None:
        argv += ["--since", f"@{since:.6f}"]
    return argv


async def journal_tail(unit: str, lines: int = 10, timeout: float = 2.0, *, output: str = "cat",
                       since: float | None = None) -> list[str]:
    """The unit's last journal lines (those since the unix time `since`, if given), or none when
    there is no journal to read."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(unit, lines, output, since), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return []
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return []
    if proc.returncode != 0:
        return []
    return [line for line in out.decode(errors="replace").splitlines() if line.strip()][-lines:]


async def journal_since(unit: str, since: float) -> list[str]:
    """The unit's lines since the unix time `since` (a start at log verbosity 4 writes about 170)."""
    return await journal_tail(unit, 2000, 5.0, since=since)


async def journal_follow(unit: str, lines: int = 50, output: str = "short-iso") -> AsyncIterator[str]:
    """The unit's last `lines` lines, then each new one as it is written (`journalctl -f`); the
    journalctl process ends when the caller stops iterating."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(unit, lines, output), "-f", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 20,  # a long line must not end the stream
        )
    except OSError:
        return
    try:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            yield line.decode(errors="replace").rstrip("\n")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# what llama-server writes while it loads, newest phase first: (pattern, what the phase is called)
_PHASES = (
    (re.compile(r"server is listening|model loaded|all slots are idle"), "model loaded"),
    (re.compile(r"warming up"), "warming up"),
    (re.compile(r"llama_kv_cache|llama_context|KV self size|kv_self"), "allocating the KV cache"),
    (re.compile(r"load_tensors"), "loading tensors"),
    (re.compile(r"llama_model_load|llama_model_loader|loading model"), "reading the model file"),
)
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def load_phase(lines: list[str]) -> str | None:
    """How far a loading llama-server has come, from its log lines (oldest first): the latest
    phase it logged, e.g. `loading tensors (33/49 layers on the GPU)`; None when it told nothing."""
    offloaded = next((m for line in reversed(lines) if (m := _OFFLOADED.search(line))), None)
    for line in reversed(lines):
        for pattern, phase in _PHASES:
            if pattern.search(line):
                if phase == "loading tensors" and offloaded is not None:
                    phase += f" ({offloaded[1]}/{offloaded[2]} layers on the GPU)"
                return phase
    return None
