"""`setup.sh --lan`: a random API key in ~/.config/llm-switch/api-key (mode 0600), a config that
requires it on 0.0.0.0, and the hints for Open WebUI and Roo Code, never the key itself."""

from __future__ import annotations

import re
import stat
import sys
import urllib.error
import urllib.request

from support.harness import free_port, http_get
from support.setup_sh import HomeManager, run_setup


def _get(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_setup_lan_writes_a_key_and_requires_it(llama_server):
    um = HomeManager(journal=True)
    try:
        port = free_port()
        args = ("--demo", "--yes", "--lan", "--listen", f"0.0.0.0:{port}", "--backend-port", str(free_port()),
                "--llama-server", llama_server[0], "--python", sys.executable)
        res = run_setup(um, *args, check=False)
        if res.returncode:
            log = "\n".join(str(e.get("MESSAGE")) for e in um.journal_json("llm-switch.service"))
            raise AssertionError(f"{res.stdout}\n{res.stderr}\n--- journal\n{log}")
        key_file = um.conf_dir / "api-key"
        key = key_file.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{48}", key), key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        config = (um.conf_dir / "config.yaml").read_text()
        assert f"listen: 0.0.0.0:{port}" in config and f"key_file: '{key_file}'" in config, config
        assert stat.S_IMODE((um.conf_dir / "config.yaml").stat().st_mode) == 0o600  # it holds api_keys
        assert key not in res.stdout + res.stderr  # told where it is, never shown
        assert "host.docker.internal" in res.stdout and "Roo Code" in res.stdout, res.stdout
        assert f"cat {key_file}" in res.stdout

        url = f"http://127.0.0.1:{port}"
        assert http_get(url + "/health")[0] == 200
        assert _get(url + "/v1/models") == 401
        assert _get(url + "/v1/models", key) == 200

        run_setup(um, *args)  # again: the key stays
        assert key_file.read_text().strip() == key
    finally:
        um.close()
