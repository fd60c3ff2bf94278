"""Small helpers shared by bench/workload.py and bench/stress.py (bench/run.py predates them).

No daemon code is imported here: the scripts talk to systemd through ``harness.UserManager``
(systemctl) and to the daemon over HTTP, so they run against any layout of ``src/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import harness  # noqa: E402
from loadgen import pct  # noqa: E402,F401  (one percentile for every bench)

SPAWN_RE = re.compile(r"spawning server instance with name=(\S+)")


def log(msg: str, tag: str = "bench") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rnd(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def private_systemd(stack: contextlib.ExitStack, work: Path, keep: bool) -> harness.UserManager:
    """A private `systemd --user` for one bench run: `stack` stops it, then removes `work` unless `keep`."""
    if not keep:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
    um = harness.UserManager()
    stack.callback(um.close)
    return um


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_SWITCH_BENCH_CACHE") or BENCH / ".cache")


def ensure_models(group: str, specs: dict[str, dict]) -> dict[str, Path]:
    """Models ``{name: make_model kwargs (with "seed")}`` as ``<cache>/models/<group>/<name>.gguf``,
    alone in that directory (llama.cpp's router serves every GGUF of a directory, named by file
    stem). Generated once; regenerated when the parameters or the generator's source change."""
    recipe = hashlib.sha256(inspect.getsource(harness.make_model).encode()).hexdigest()[:16]
    params = {"models": specs, "recipe": recipe}
    d = cache_dir() / "models" / group
    stamp = d / "params.json"
    paths = {name: d / f"{name}.gguf" for name in specs}
    if stamp.exists() and json.loads(stamp.read_text()) == params and all(p.exists() for p in paths.values()):
        return paths
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, spec in specs.items():
        kw = dict(spec)
        seed = kw.pop("seed")
        t0 = time.monotonic()
        harness.make_model(paths[name], seed, **kw)
        log(f"generated {paths[name]} ({paths[name].stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    stamp.write_text(json.dumps(params))
    return paths


def machine_info(server: str, server_env: dict[str, str], daemon_python: str | None = None) -> dict:
    info: dict = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                  "loadavg_start": os.getloadavg()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **server_env})
        info["llama_server"] = " ".join((out.stdout + out.stderr).split())[:200]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        info["git"] = head + (" (src modified)" if any(line.strip() for line in dirty) else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if daemon_python:
        info["daemon_python"] = daemon_python
    return info


def text(rng: random.Random, chars: int) -> str:
    """ASCII filler of exactly ``chars`` characters. The generated vocabulary has no merges, so
    this is one token per character (docs/testing.md)."""
    words = []
    n = 0
    while n < chars:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:chars]


def router_loads(log_path: Path) -> dict[str, int]:
    """Model starts of a llama.cpp router, from its log: one "spawning server instance with
    name=X" line per child process it starts."""
    try:
        body = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for m in SPAWN_RE.finditer(body):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def unit_loads(backend: harness.Backend) -> int:
    """Starts of a unit, from its ExecStartPre marks (harness.unit_text events_path): every
    start systemd ran, also ones that failed or were stopped before they became ready."""
    return len(backend.runs())


def tail(text_: str, n: int = 20) -> str:
    return "\n".join(text_.splitlines()[-n:])
