"""Helpers for the tests of setup.sh (test_setup.py, test_setup_lan.py, test_service.py).

setup.sh runs as a new user would run it: against a real ``systemd --user`` (harness.UserManager)
whose HOME is a fresh temporary directory, so ``%h`` in the units, ``~/.local/share`` and
``~/.config`` are all inside the test's own tree. The venv setup.sh makes is real too (pip
installs this checkout); pip reads the machine's usual PIP_* settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import harness

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "setup.sh"
MODEL_TEMPLATES = REPO / "deploy" / "models"
REAL_MODELS = ("qwen3-coder-flash", "qwen3-coder-next", "qwen3-thinking", "qwen3-thinking-next",
               "bge-m3")
SETUP_TIMEOUT = 900  # a cold pip install on a loaded 2-core machine


class HomeManager(harness.UserManager):
    """A private user manager whose HOME (and so ``%h``) is ``self.home``, a fresh directory."""

    def _start(self, timeout: float) -> None:
        self.home = self.dir / "home"
        self.home.mkdir()
        self.env["HOME"] = str(self.home)
        super()._start(timeout)

    @property
    def conf_dir(self) -> Path:
        """Where setup.sh puts config.yaml and the model files (%E/llm-switch)."""
        return self.config_dir / "llm-switch"

    @property
    def data_dir(self) -> Path:
        return self.home / ".local" / "share" / "llm-switch"


def setup_env(um: HomeManager, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a user's login shell would have: the manager's bus and HOME, no $LLAMA_SERVER."""
    env = um.client_env()
    env.pop("LLAMA_SERVER", None)
    env.pop("VIRTUAL_ENV", None)
    env.update(extra or {})
    return env


def run_setup(um: HomeManager, *args: str, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """``bash setup.sh ARGS`` with no terminal (so no prompts); output captured as text."""
    res = subprocess.run(["bash", str(SETUP), *args], env=env or setup_env(um),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=SETUP_TIMEOUT, cwd=str(um.home))
    if check and res.returncode != 0:
        raise AssertionError(f"setup.sh {' '.join(args)} exited {res.returncode}\n"
                             f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}\n"
                             f"--- service\n{service_debug(um)}")
    return res


def service_debug(um: HomeManager) -> str:
    res = um.systemctl("status", "llm-switch.service", "llama-server@*", check=False)
    text = res.stdout + res.stderr
    if um.journald_pid is not None:
        try:
            entries = um.journal_json()
            text += "\n--- journal\n" + "\n".join(str(e.get("MESSAGE", "")) for e in entries[-60:])
        except harness.HarnessError as exc:
            text += f"\n(journal: {exc})"
    return text


def python_for_venv() -> str:
    """The interpreter setup.sh builds its venv from: the one running the tests (3.11+)."""
    return sys.executable


def request(url: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, Any]:
    """POST JSON (or GET when body is None); (status, parsed JSON or raw text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def chat(base_url: str, model: str, timeout: float = 180.0) -> tuple[int, Any]:
    return request(base_url + "/v1/chat/completions",
                   {"model": model, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hello"}]}, timeout)


def tree_state(*roots: Path) -> dict[str, tuple]:
    """Every file, link and directory under roots, with its content hash and mtime."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                if path.is_symlink():
                    state[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
                elif path.is_file():
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    state[str(path)] = ("file", digest, st.st_mtime_ns)
                else:
                    state[str(path)] = ("dir",)
    return state


def free_backend_port(avoid: int) -> int:
    """A port P for setup.sh's --backend-port: P and P + 1 (bge-m3's own port) were both free
    a moment ago, and neither is ``avoid`` (the --listen port).

    Taken below the kernel's ephemeral range: there bind(0) hands out odd ports and connect()
    takes even ones as source ports, so the P + 1 of a port from bind(0) is just what the
    switch's own connections use, and bge-m3 could find it taken."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    top = low - 1 if low > 12000 else 65535
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, top - 1)
        if avoid in (port, port + 1):
            continue
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise harness.HarnessError("found no two adjacent free ports")


def make_real_model_files(models_dir: Path) -> dict[str, Path]:
    """Tiny GGUFs under the file names the shipped model files expect, so the shipped settings
    (q8_0 KV cache, override-tensor, flash attention, big contexts, ...) run for real.

    head size 32 (hidden 128, 4 heads): q8_0 KV cache needs a multiple of its block size 32.
    """
    out = {}
    for i, name in enumerate(REAL_MODELS):
        text = (MODEL_TEMPLATES / f"{name}.env").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("LLAMA_ARG_MODEL="))
        file_name = line.split("@MODELS_DIR@/", 1)[1].rstrip("'")
        out[name] = harness.make_model(models_dir / file_name, seed=100 + i, hidden=128, heads=4,
                                       ffn=256)
    return out
