"""`models_dir:`: every GGUF file in a folder is a model named by its stem. The folder read as a
table of cases; then a GGUF copied into the folder of a running switch is served after a reload,
with no other step."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.request

import pytest

from support.harness import Daemon, wait_for
from llm_switch.config import parse
from llm_switch.errors import ConfigError


def _tree(root, files):
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)


GGUF = b"GGUF\x03\x00\x00\x00" + b"\0" * 24


def test_what_is_a_model_and_what_is_left_out(tmp_path):
    _tree(tmp_path, {"a.gguf": GGUF, "sub/B-7B.Q4_K_M.gguf": GGUF, "mmproj-a-f16.gguf": GGUF,
                     "big-00001-of-00002.gguf": GGUF, "big-00002-of-00002.gguf": GGUF,
                     "fake.gguf": b"PK\x03\x04", "other/a.gguf": GGUF, "notes.txt": b"x",
                     "keep.gguf": GGUF})
    config = parse(f"""
models_dir: {tmp_path}
models_defaults: {{ctx: 4096, args: [-ngl, 99], llama_server: /opt/llama-server}}
models:
  keep: other.service
""")
    dir_models = {n: m for n, m in config.models.items() if m.cmd}
    assert sorted(dir_models) == ["B-7B.Q4_K_M", "a", "big"]
    assert config.models["keep"].unit == "other.service"  # a model of models: wins
    a = config.models["a"]
    port = a.url.rsplit(":", 1)[1]
    assert a.cmd == ("/usr/bin/env", "LLAMA_ARG_LOG_VERBOSITY=4", "/opt/llama-server", "--host", "127.0.0.1",
                     "--port", port, "--model", str(tmp_path / "a.gguf"), "--alias", "a", "--ctx-size", "4096",
                     "-ngl", "99")
    assert len({m.url for m in dir_models.values()}) == 3
    warned = "\n".join(config.warnings)
    assert "fake.gguf is not a GGUF file" in warned and "other/a.gguf has the name 'a'" in warned
    assert config.warnings == tuple(dict.fromkeys(config.warnings))  # one warning each


@pytest.mark.parametrize("top, auto, memory", [
    ("", False, None),
    ("memory_budget: 8G\n", True, None),
    ("models_defaults: {memory: 1G, llama_server: /x}\n", False, 1 << 30),
])
def test_memory_of_dir_models(tmp_path, top, auto, memory):
    _tree(tmp_path, {"m.gguf": GGUF})
    if "llama_server" not in top:
        top += "models_defaults: {llama_server: /x}\n"
    m = parse(f"models_dir: {tmp_path}\n" + top).models["m"]
    assert (m.memory_auto, m.memory) == (auto, memory)


@pytest.mark.parametrize("text, message", [
    ("models_dir: relative/dir\n", "models_dir: must be an absolute path"),
    ("models_dir: /nonexistent-dir-xyz\n", "is not a directory"),
    ("models_dir: {d}\nmodels_defaults: {{ctx: -1, llama_server: /x}}\n", "models_defaults.ctx"),
    ("models_dir: {d}\nmodels_defaults: {{nope: 1}}\n", "models_defaults.nope: unknown key"),
    ("models_dir: {d}\nmodels_defaults: {{llama_server: /x}}\n", "holds no GGUF file"),
])
def test_bad_models_dir_settings_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text.format(d=tmp_path))


def test_a_gguf_copied_into_the_folder_is_served_after_a_reload(deploy, tiny_models, llama_server, tmp_path):
    """The llama-server is the one setup.sh names in llama-server.env (with its libraries)."""
    folder, xdg = tmp_path / "models", tmp_path / "xdg"
    folder.mkdir()
    (xdg / "llm-switch").mkdir(parents=True)
    libs = llama_server[1].get("LD_LIBRARY_PATH")
    (xdg / "llm-switch" / "llama-server.env").write_text(
        f"LLAMA_SERVER='{llama_server[0]}'\n" + (f"LD_LIBRARY_PATH='{libs}'\n" if libs else ""))
    first, second = f"first-{deploy.tag}", f"second-{deploy.tag}"
    shutil.copy(tiny_models["a"], folder / f"{first}.gguf")
    config = deploy.write_config(None, models_dir=str(folder))
    for name in (first, second):
        deploy.expect_transient(name)
    daemon = Daemon(config, {**deploy.um.env, "XDG_CONFIG_HOME": str(xdg)}, log_path=deploy.dir / "llm-switch.log")
    deploy.daemons.append(daemon)
    assert _ids(daemon) == [first]
    shutil.copy(tiny_models["b"], folder / f"{second}.gguf")
    daemon.proc.send_signal(signal.SIGHUP)  # what systemctl --user reload llm-switch sends
    wait_for(lambda: second in _ids(daemon), 30, what="the reloaded switch listing the new file")
    body = json.dumps({"model": second, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=180) as resp:
        assert json.loads(resp.read())["model"] == second
    (folder / f"{first}.gguf").unlink()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _ids(daemon) == [second], 30, what="the reloaded switch without the removed file")


def _ids(daemon) -> list[str]:
    return [m["id"] for m in daemon.get_json("/v1/models")["data"]]
