"""`setup.sh --models-dir DIR` with GGUF files of the user's own: they are found (in subdirectories
too), listed and configured beside the tuned presets; mmproj files, the later parts of split
models and the presets' own files are not. A found model answers by its name."""

from __future__ import annotations

import shutil
import sys

import pytest

from support import harness
from support.harness import free_port
from support.setup_sh import (HomeManager, chat, free_backend_port, request, run_setup, service_debug,
                                tree_state)

BGE_FILE = "ggml-org_bge-m3-Q8_0-GGUF_bge-m3-q8_0.gguf"  # bge-m3's file name in deploy/models/bge-m3.env


@pytest.fixture(scope="module")
def installed(llama_server, tmp_path_factory):
    um = HomeManager()
    try:
        models = um.home / "models"
        tiny = harness.make_model(tmp_path_factory.mktemp("m") / "tiny.gguf", seed=11)
        for rel in ("sub/My Model.Q4_K_M.gguf", "big-00001-of-00002.gguf", "big-00002-of-00002.gguf",
                    "mmproj-My-Model-f16.gguf", BGE_FILE, "deeper/x/sub/a.gguf"):
            (models / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny, models / rel)
        (models / "notes.txt").write_text("not a model\n")
        listen = free_port()
        args = ["--yes", "--llama-server", llama_server[0], "--models-dir", str(models),
                "--listen", f"127.0.0.1:{listen}", "--backend-port", str(free_backend_port(avoid=listen)),
                "--python", sys.executable]
        res = run_setup(um, *args)
        yield um, res, args, f"http://127.0.0.1:{listen}"
    finally:
        um.close()


def test_own_models_are_listed_and_configured_beside_the_presets(installed):
    um, res, _, url = installed
    found = res.stdout.split("offered beside the tuned presets):", 1)[1].split("==>", 1)[0]
    names = [line.split()[0] for line in found.strip().splitlines()]
    assert names == ["big", "a", "My-Model.Q4_K_M"], res.stdout  # in file order; no mmproj, no part 2
    config = (um.conf_dir / "config.yaml").read_text()
    for name in names:
        assert f"  {name}: llama-server@{name}.service  # your own: " in config
        env = (um.conf_dir / "models" / f"{name}.env").read_text()
        assert f"LLAMA_ARG_ALIAS={name}\n" in env
    assert "bge-m3" in config and "\n  ggml-org" not in config  # the preset's file stays the preset's
    status, body = request(url + "/v1/models")
    assert [m["id"] for m in body["data"]][-3:] == names
    status, body = chat(url, "My-Model.Q4_K_M")
    assert status == 200, (body, service_debug(um))
    assert body["model"] == "My-Model.Q4_K_M"


def test_a_rerun_changes_nothing(installed):
    um, _, args, _ = installed
    before = tree_state(um.home / ".local", um.config_dir)
    res = run_setup(um, *args)
    assert "Nothing changed" in res.stdout, res.stdout
    assert tree_state(um.home / ".local", um.config_dir) == before
