"""The command line as a user meets it: ``llm-switch check`` and ``serve`` against a real manager."""

from __future__ import annotations

import signal
import subprocess
import sys

from support.harness import _listen_of, free_port, http_get, wait_for


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
    assert "models.coder.unit" in proc.stderr + proc.stdout
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

