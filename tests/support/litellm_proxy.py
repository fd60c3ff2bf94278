"""A real LiteLLM proxy for the tests, from its own venv (litellm is large: never in .venv).

The venv is made once and cached under ``$LLMT_CACHE`` (default ``~/.cache/llm-switch-tests``);
a venv whose install did not finish is made again. Everything fails loudly: no skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import harness

# 1.103 and newer need a certifi release that PyPI mirrors may not have yet; 1.107.0 was a
# compromised release (withdrawn). Pinned, so that a new release never changes the tests.
LITELLM = "litellm[proxy]==1.102.4"


def cache_dir() -> Path:
    return Path(os.environ.get("LLMT_CACHE") or Path.home() / ".cache" / "llm-switch-tests")


def litellm_venv(timeout: float = 1800) -> Path:
    """The `litellm` executable of a cached venv with LITELLM installed (made when missing)."""
    venv = cache_dir() / ("venv-" + LITELLM.split("==")[1])
    exe, done = venv / "bin" / "litellm", venv / "installed.ok"
    if done.exists() and exe.exists():
        return exe
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = shutil.which("python3") or sys.executable
    for argv in ([python, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", LITELLM]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise harness.HarnessError(f"cannot make the LiteLLM venv: {' '.join(argv)} -> {res.returncode}\n"
                                       f"{(res.stderr or res.stdout)[-3000:]}")
    if not exe.exists():
        raise harness.HarnessError(f"{LITELLM} installed, but {exe} is missing")
    done.write_text(LITELLM + "\n")
    return exe


class LiteLLMProxy:
    """`litellm --config FILE --port N` on 127.0.0.1; close() stops it."""

    def __init__(self, exe: Path, config: Path, log_path: Path, startup_timeout: float = 240) -> None:
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
        env.update(LITELLM_LOG="INFO", LITELLM_TELEMETRY="False", NO_DOCS="True", DISABLE_ADMIN_UI="True")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([str(exe), "--config", str(config), "--host", "127.0.0.1",
                                          "--port", str(self.port), "--num_workers", "1"],
                                         env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait(startup_timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise harness.HarnessError(f"litellm exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health/liveliness", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise harness.HarnessError(f"litellm did not answer in {timeout:.0f} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
