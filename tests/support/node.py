"""The npm `openai` packages under Node, for the tests that drive them (tests/node)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def npm_ready() -> None:
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are needed for the openai npm client test"
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists() or \
            not (NODE_DIR / "node_modules" / "openai-v5" / "package.json").exists():
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, f"npm ci failed:\n{res.stdout}\n{res.stderr}"
