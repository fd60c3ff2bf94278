"""The command line as a user meets it, against a real manager and a real switch: `check`, `serve`,
and the commands that ask the running switch (`ps`, `ls`, `status --json`, `unload`, `reload`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

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



# -- the commands that ask the running switch ---------------------------------------------------


def test_ps_ls_status_json_and_unload_with_no_name_stop_everything(deploy):
    a = deploy.scripted_unit("a", {})
    b = deploy.scripted_unit("b", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url, "aliases": ["first"], "memory": "1G"},
                        "b": {"unit": b.unit, "url": b.url, "memory": "1G"}}, memory_budget="4G")
    config = str(daemon.config_path)
    listed = deploy.cli("ls", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:3] for line in listed.stdout.splitlines()] == [
        ["NAME", "ALIASES", "MEMORY"], ["a", "first", "1G"], ["b", "-", "1G"]]
    assert deploy.cli("ls", "--names", "--config", config).stdout.split() == ["a", "first", "b"]
    assert deploy.cli("ps", "--config", config).stdout.strip() == "no model is running"

    for name in ("first", "b"):
        done = deploy.cli("load", name, "--config", config)
        assert done.returncode == 0, done.stderr
    ps = deploy.cli("ps", "--config", config)
    assert ps.returncode == 0, ps.stderr
    rows = [line.split() for line in ps.stdout.splitlines()]
    assert rows[0][:3] == ["NAME", "STATE", "MEMORY"]
    assert sorted((r[0], r[1]) for r in rows[1:]) == [("a", "ready"), ("b", "ready")], ps.stdout
    status = deploy.cli("status", "--json", "--config", config)
    assert status.returncode == 0, status.stderr
    assert {m["model"]: m["state"] for m in json.loads(status.stdout)["models"]} == {"a": "ready", "b": "ready"}

    unloaded = deploy.cli("unload", "--config", config)
    assert unloaded.returncode == 0, unloaded.stderr
    assert sorted(unloaded.stdout.strip().removeprefix("unloaded ").split(", ")) == ["a", "b"]
    assert deploy.um.active_units(f"*-{deploy.tag}@*") == []
    assert deploy.cli("unload", "--config", config).stdout.strip() == "no model was running"


def test_reload_says_whether_the_new_config_applied_or_why_it_was_refused(deploy):
    a = deploy.scripted_unit("a", {})
    b = deploy.scripted_unit("b", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    config = str(daemon.config_path)
    deploy.write_config({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                        listen=daemon.listen)
    done = deploy.cli("reload", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"reloaded {config}: 2 models: a, b"), done.stdout
    assert [m["model"] for m in daemon.get_json("/status")["models"]] == ["a", "b"]

    deploy.write_config({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": "b", "url": b.url}}, listen=daemon.listen)
    refused = deploy.cli("reload", "--config", config)
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith("llm-switch reload: reload refused, the running config stays in force:")
    assert "models.b.unit" in refused.stderr
    assert [m["model"] for m in daemon.get_json("/status")["models"]] == ["a", "b"]
    last = daemon.get_json("/reload")["last"]
    assert last["applied"] is False and "models.b.unit" in last["reason"]

    # SIGHUP (systemctl reload) takes the same path; its outcome is GET /reload's too
    deploy.write_config({"a": {"unit": a.unit, "url": a.url}}, listen=daemon.listen)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (daemon.get_json("/reload")["last"] or {}).get("applied"), 30, what="the SIGHUP reload")
    assert [m["model"] for m in daemon.get_json("/status")["models"]] == ["a"]


def test_the_switch_serves_its_own_openapi_description(deploy):
    a = deploy.scripted_unit("a", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    doc = daemon.get_json("/openapi.json")
    assert doc["openapi"].startswith("3.1.")
    assert {"/status", "/load/{model}", "/reload", "/v1/{tail}", "/api/chat", "/v1/messages"} <= set(doc["paths"])


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("ps",), ("load", "a"), ("unload",),
                                  ("unload", "a"), ("logs", "a"), ("reload",)])
def test_every_command_says_the_same_when_the_switch_is_not_running(deploy, args):
    listen = f"127.0.0.1:{free_port()}"
    config = deploy.write_config({"a": "a.service"}, listen=listen)
    res = deploy.cli(*args, "--config", str(config))
    assert res.returncode == 3, res
    assert res.stderr.splitlines()[0] == f"llm-switch is not running at http://{listen}: Connection refused", res.stderr
    if args != ("status",):  # status goes on with systemd's view, on stdout
        assert res.stdout == ""


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
