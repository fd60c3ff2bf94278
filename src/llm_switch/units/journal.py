"""A unit's journal lines, read with journalctl (the one subprocess the switch runs)."""

from __future__ import annotations

import asyncio


async def journal_tail(unit: str, lines: int = 10, timeout: float = 2.0) -> list[str]:
    """The unit's last journal lines, or none when there is no journal to read."""
    try:
        proc = await asyncio.create_subprocess_exec(
            # --user-unit, not --user -u: it also finds user units' lines kept in the system journal
            # (a volatile journal, or root's own manager)
            "journalctl", "--user-unit", unit, "-n", str(lines), "-o", "cat", "--no-pager", "-q",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
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
