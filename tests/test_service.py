"""llm-switch.service under a real user manager with journald: readiness, status, reload, logs.

One installation (`setup.sh --demo` with the tests' llama-server) is shared by the tests of this
module, which run in file order.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from support.factories import module_manager
from support.harness import free_port, http_get, wait_for
from support.setup_sh import (
    HomeManager,
    chat,
    request,
    run_setup,
    service_debug,
    setup_env,
)

SERVICE = "llm-switch.service"


um = module_manager(HomeManager, journal=True)


@pytest.fixture(scope="module")
def svc(um, llama_server):
    port = free_port()
    run_setup(um, "--demo", "--yes", "--llama-server", llama_server[0],
              "--listen", f"127.0.0.1:{port}", "--backend-port", str(free_port()),
              "--python", sys.executable)
    config = um.conf_dir / "config.yaml"
    return SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, config=config,
                           original=config.read_text())


def _messages(um, since: float = 0.0) -> list[dict]:
    """llm-switch.service's journal entries (after ``since``, a unix time)."""
    return [e for e in um.journal_json(SERVICE)
            if int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6 >= since]


def _find(um, pattern: str, since: float = 0.0, timeout: float = 30.0) -> dict:
    """The first journal entry of the service whose message matches ``pattern``."""
    regex = re.compile(pattern)

    def look():
        return next((e for e in _messages(um, since) if regex.search(str(e.get("MESSAGE")))), None)

    try:
        return wait_for(look, timeout, interval=0.2, what=f"a journal line matching {pattern!r}")
    except Exception:
        lines = "\n".join(f"<{e.get('PRIORITY')}> {e.get('MESSAGE')}" for e in _messages(um))
        raise AssertionError(f"no journal line matches {pattern!r}; the service logged:\n{lines}")


def _ensure_running(um, svc) -> None:
    if um.show(SERVICE, "ActiveState")["ActiveState"] != "active":
        um.systemctl("reset-failed", SERVICE, check=False)
        um.systemctl("start", SERVICE)


def _reload(um, svc, text: str, until=None) -> float:
    """Write config.yaml, `systemctl --user reload`, and wait for ``until()`` to hold.

    ExecReload only sends SIGHUP: `systemctl reload` returns before the daemon has read the file,
    so each caller waits for the effect it needs.
    """
    t0 = time.time()
    svc.config.write_text(text)
    um.systemctl("reload", SERVICE)
    if until is None:  # the daemon's own word that it read the file
        _find(um, r"config reloaded|reload refused", since=t0)
    else:
        wait_for(until, 60, interval=0.1, what="the reloaded config to be in force")
    wait_for(lambda: um.show(SERVICE, "ActiveState")["ActiveState"] == "active", 60,
             what="llm-switch active again after reload")
    return t0


def _knows(svc, model: str, known: bool = True):
    return lambda: (http_get(f"{svc.url}/v1/models/{model}")[0] == 200) == known


# -- readiness ---------------------------------------------------------------------------------


def test_unit_is_active_only_once_it_answers(um, svc):
    """Type=notify: `systemctl start` returns after READY=1, when requests are served; with
    Type=simple it would return before Python has even imported aiohttp."""
    props = um.show(SERVICE, "Type", "NotifyAccess", "Restart", "ExecReload")
    assert (props["Type"], props["NotifyAccess"], props["Restart"]) == ("notify", "main", "on-failure")
    for _ in range(3):
        um.systemctl("stop", SERVICE)
        assert http_get(svc.url + "/health")[0] == 0
        um.systemctl("start", SERVICE)
        assert um.show(SERVICE, "ActiveState")["ActiveState"] == "active"
        status, _ = http_get(svc.url + "/health", timeout=5)  # at once, no retry
        assert status == 200, service_debug(um)
        assert um.show(SERVICE, "StatusText")["StatusText"]  # STATUS= came with READY=1


def test_no_ready_no_active_and_restart_on_failure_recovers(um, svc):
    """A daemon that cannot listen never sends READY=1: the start fails instead of showing an
    active unit; once the port is free again, Restart=on-failure brings it back by itself."""
    um.systemctl("stop", SERVICE)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, not shared
    blocker.bind(("127.0.0.1", svc.port))
    blocker.listen()
    try:
        res = um.systemctl("start", SERVICE, check=False, timeout=120)
        assert res.returncode != 0, "start must fail while the port is taken"
        assert um.show(SERVICE, "ActiveState")["ActiveState"] != "active"
    finally:
        blocker.close()
    wait_for(lambda: um.show(SERVICE, "ActiveState")["ActiveState"] == "active", 60,
             what="Restart=on-failure to bring llm-switch back")
    assert http_get(svc.url + "/health", timeout=5)[0] == 200


# -- what systemctl status shows --------------------------------------------------------------


def test_status_line_names_the_running_model_and_the_last_switch(um, svc):
    _ensure_running(um, svc)
    assert chat(svc.url, "demo-a")[0] == 200
    assert chat(svc.url, "demo-b")[0] == 200
    text = um.show(SERVICE, "StatusText")["StatusText"]
    assert "demo-b ready" in text, text
    assert "demo-a → demo-b" in text, text
    shown = um.systemctl("status", SERVICE, check=False).stdout
    assert "demo-b ready" in shown


# -- reload ------------------------------------------------------------------------------------


def test_reload_keeps_the_running_model_running(um, svc):
    _ensure_running(um, svc)
    assert chat(svc.url, "demo-a")[0] == 200
    unit = "llama-server@demo-a.service"
    model_before = um.show(unit, "MainPID", "InvocationID")
    daemon_before = um.show(SERVICE, "MainPID")
    switches = len(request(svc.url + "/status")[1]["switches"])
    # a new alias: proof that the new config is in force
    new = svc.original.replace("  demo-a: llama-server@demo-a.service",
                               "  demo-a:\n    unit: llama-server@demo-a.service\n    aliases: [first]")
    assert new != svc.original
    _reload(um, svc, new, until=_knows(svc, "first"))
    assert um.show(unit, "MainPID", "InvocationID") == model_before
    assert um.show(SERVICE, "MainPID") == daemon_before  # reloaded, not restarted
    status, body = chat(svc.url, "first")
    assert status == 200, body
    assert len(request(svc.url + "/status")[1]["switches"]) == switches  # no switch needed
    assert um.show(unit, "MainPID", "InvocationID") == model_before


def test_bad_config_on_reload_is_refused_with_an_error_and_the_old_one_stays(um, svc):
    _ensure_running(um, svc)
    good = svc.config.read_text()
    t0 = _reload(um, svc, good + "  broken:\n    unit: not-a-service\n")
    entry = _find(um, r"reload refused.*models\.broken\.unit", since=t0)
    assert entry["PRIORITY"] == "3"
    assert chat(svc.url, "first")[0] == 200  # the alias of the config still in force
    _reload(um, svc, good)


# -- journald ----------------------------------------------------------------------------------


def test_journal_priorities_are_the_log_levels(um, svc):
    """Under systemd the daemon's lines start with <N>: journald stores N as PRIORITY (so
    `journalctl -p warning` works) and strips it from the message."""
    _ensure_running(um, svc)
    # warning: a listen change on reload takes effect only on restart
    good = svc.config.read_text()
    t0 = _reload(um, svc, good.replace(f"listen: 127.0.0.1:{svc.port}",
                                       f"listen: 127.0.0.1:{free_port()}"))
    warning = _find(um, r"take effect on restart|takes effect on restart", since=t0)
    assert warning["PRIORITY"] == "4"
    _reload(um, svc, good)
    # error: a model whose GGUF is missing fails to start; the client gets a 502
    models = um.conf_dir / "models"
    (models / "ghost.env").write_text(
        (models / "demo-a.env").read_text().replace("demo-a.gguf", "no-such-model.gguf"))
    t1 = _reload(um, svc, good + "  ghost: llama-server@ghost.service\n", until=_knows(svc, "ghost"))
    status, body = chat(svc.url, "ghost")
    assert status == 502, body
    error = _find(um, r"^ghost: start failed", since=t1)
    assert error["PRIORITY"] == "3"
    # info: the switch lines
    info = _find(um, r"^switch .* → ")
    assert info["PRIORITY"] == "6"
    for entry in _messages(um):
        message = str(entry.get("MESSAGE"))
        assert not re.match(r"<\d>", message), message            # prefix parsed, not kept
        assert not re.match(r"\d\d:\d\d:\d\d ", message), message  # journald stamps the time
    _reload(um, svc, good, until=_knows(svc, "ghost", known=False))
    (models / "ghost.env").unlink()


def test_a_wrong_llama_server_path_fails_the_start_at_once(um, svc):
    """The template checks $LLAMA_SERVER before running it: the start job fails, the client
    gets a 502 at once (not a health timeout), and the unit's log names the file to fix."""
    _ensure_running(um, svc)
    assert chat(svc.url, "demo-b")[0] == 200
    env_file = um.conf_dir / "llama-server.env"
    good = env_file.read_text()
    env_file.write_text("LLAMA_SERVER=/nonexistent/llama-server\n")
    try:
        t0 = time.monotonic()
        status, body = chat(svc.url, "demo-a")
        assert status == 502, body
        assert time.monotonic() - t0 < 30
        unit = "llama-server@demo-a.service"
        assert um.show(unit, "ActiveState")["ActiveState"] == "failed"
        # matched by its text, not by its unit: journald may attribute the line of a shell that has
        # already exited to no unit (it timed out once under a loaded full run, never alone)
        lines = wait_for(lambda: [e for e in um.journal_json()
                                  if "LLAMA_SERVER=/nonexistent/llama-server is not an executable file"
                                  in str(e.get("MESSAGE"))], 30,
                         what="the ExecStartPre message in the journal")
        assert str(env_file) in lines[0]["MESSAGE"]
    finally:
        env_file.write_text(good)
    status, body = chat(svc.url, "demo-a")  # fixed: the next request starts it
    assert status == 200, body


# -- llm-switch status ----------------------------------------------------------------------


def test_status_command_from_the_daemon_then_from_systemd(um, svc):
    _ensure_running(um, svc)
    assert chat(svc.url, "demo-b")[0] == 200
    cmd = [str(um.home / ".local" / "bin" / "llm-switch"), "status"]
    env = setup_env(um)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert str(svc.config) in out.stdout
    assert re.search(r"demo-b\s+ready\s+llama-server@demo-b\.service", out.stdout), out.stdout
    assert re.search(r"demo-a\s+stopped", out.stdout), out.stdout
    assert re.search(r"→ demo-b: .*demo-b ready in [\d.]+ s", out.stdout), out.stdout

    um.systemctl("stop", SERVICE)  # the model stays running: the daemon leaves units as they are
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 3, out.stdout + out.stderr
        assert out.stderr.startswith(f"llm-switch is not running at {svc.url}: "), out.stderr  # as every command says
        assert "llm-switch.service: inactive" in out.stdout
        assert re.search(r"demo-b\s+active\s+llama-server@demo-b\.service", out.stdout), out.stdout
        assert re.search(r"demo-a\s+inactive", out.stdout), out.stdout
    finally:
        um.systemctl("start", SERVICE)
    # restarted, it adopts the model instead of restarting it
    assert re.search(r"demo-b\s+ready", subprocess.run(cmd, env=env, capture_output=True,
                                                        text=True, timeout=120).stdout)
