"""Where the daemon's CPU time goes: py-spy on its process while one bench block runs."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path


class Profiler:
    """py-spy on the daemon while one block runs (``--profile DIR``): collapsed stacks and a summary
    of the functions where samples land. No-op without a directory."""

    def __init__(self, py_spy: str | None, out_dir: Path | None) -> None:
        self.py_spy, self.out_dir = py_spy, out_dir
        self.summaries: dict[str, dict] = {}

    @contextlib.asynccontextmanager
    async def record(self, name: str, pid: int):
        if not self.py_spy or not self.out_dir:
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}.txt"
        proc = await asyncio.create_subprocess_exec(
            self.py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking",
            "--output", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # attached
        try:
            yield
        finally:
            proc.send_signal(2)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if path.exists():
                self.summaries[name] = summarize_stacks(path)

    def report(self) -> str:
        lines = []
        for name, s in self.summaries.items():
            lines.append(f"profile {name}: {s['samples']} samples while on CPU (py-spy leaves idle ones out)")
            for row in s["self"][:12]:
                lines.append(f"   self {row['pct']:5.1f}%  {row['frame']}")
            for row in s["inclusive"][:12]:
                lines.append(f"   incl {row['pct']:5.1f}%  {row['frame']}  (with what it calls)")
        return "\n".join(lines)


def summarize_stacks(path: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares per frame from py-spy's collapsed ("raw") output."""
    total = 0
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:  # per function, not per line
            if "llm_switch/" in f and not any(x in f for x in ("cli.py", "__main__.py")) or "json/" in f:
                incl[f] = incl.get(f, 0) + n

    def rows(d: dict[str, int]) -> list[dict]:
        return [{"frame": f, "pct": round(100 * c / total, 1)} for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]

    return {"samples": total, "self": rows(own), "inclusive": rows(incl)}
