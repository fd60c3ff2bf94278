"""The command line as a user meets it: ``llm-switch check`` and ``serve`` against a real manager."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from harness import _listen_of, free_port, http_get, wait_for


def test_check_reports_a_missing_unit_and_fails(deploy):
    s = deploy.scripted_unit("s", {})
    missing = f"llama-server@missing-{deploy.tag}.service"
    config = deploy.write_config({"here": {"unit": s.unit, "url": s.url}, "gone": missing})
    res = deploy.cli("check", "--config", str(config))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert missing in out
    assert s.unit not in [line.strip() for line in out.splitlines()]  # no complaint about it
    assert deploy.um.active_units(f"*-{deploy.tag}@*") == []  # check starts nothing


def test_check_passes_when_every_unit_exists(deploy):
    s = deploy.scripted_unit("s", {})
    config = deploy.write_config({"here": {"unit": s.unit, "url": s.url},
                                  "cmd": {"cmd": "/bin/sleep infinity",
                                          "url": "http://127.0.0.1:9"}})
    res = deploy.cli("check", "--config", str(config))
    assert res.returncode == 0, res.stdout + res.stderr


def test_bad_config_exits_non_zero_naming_the_key_before_listening(deploy):
    listen = f"127.0.0.1:{free_port()}"
    config = deploy.write_config(raw=f"""\
listen: {listen}
models:
  coder:
    unit: coder
""")
    proc = subprocess.run([sys.executable, "-m", "llm_switch", "serve", "--config", str(config)],
                          env=deploy.um.client_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{config}:4: models.coder.unit: must end in .service" in proc.stderr + proc.stdout  # as check says it
    assert http_get(f"http://{listen}/health")[0] == 0


def test_config_found_through_the_environment_variable(deploy):
    s = deploy.scripted_unit("s", {"routes": {"*": {"json": {"ok": True}}}})
    config = deploy.write_config({"s": {"unit": s.unit, "url": s.url}})
    deploy.reload()
    env = {**deploy.um.env, "LLM_SWITCH_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "llm_switch", "serve"],
                            env={**deploy.um.client_env(), **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://{_listen_of(config)}"
        wait_for(lambda: http_get(url + "/health")[0] == 200, 90,
                 what="llm-switch started from $LLM_SWITCH_CONFIG")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sigterm_exits_zero_and_leaves_the_model_running(deploy, tiny_models):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "a", "max_tokens": 4, "messages": [
                                     {"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
    t0 = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - t0 < 15
    assert deploy.um.active_units(f"*-{deploy.tag}@*") == [a.unit]
    assert http_get(a.url + "/health")[0] == 200


def _check(config, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_switch", "check", "--config", str(config)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_check_prints_five_mistakes_on_five_lines(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("""\
listen: 127.0.0.1:3002
ttl: 600
models:
  coder:
    unit: llama-server@coder.service
    aliases: c, d
    memory: 6
    helth_timeout: 5m
  tiny:
    cmd: /usr/bin/llama-server -m /models/tiny.gguf --port ${PORT}
""")
    res = _check(config)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"{config}:2: ttl: unknown key; ttl is llama-swap's; here: idle_unload",
        f"{config}:6: models.coder.aliases: must be a list, such as [c, d] (got 'c, d')",
        f"{config}:7: models.coder.memory: 6 bytes? write 6G (or K, M, T: sizes need a unit)",
        f"{config}:8: models.coder.helth_timeout: unknown key; did you mean health_timeout?",
        f"{config}:10: models.tiny.cmd: ${{PORT}} is a llama-swap macro, which llm-switch does not expand; convert "
        "the config with `llm-switch import`, or write the value itself",
    ]


def test_check_without_a_user_bus_still_checks_the_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  a: a.service\n")
    no_bus = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    res = _check(config, no_bus)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{config}: config OK; systemd not reachable: cannot reach the systemd user manager")
    config.write_text("models:\n  a: a\n")
    res = _check(config, no_bus)
    assert (res.returncode, res.stderr) == (1, f"{config}:2: models.a.unit: must end in .service (got 'a')\n")
