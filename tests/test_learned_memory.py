"""Memory learned from llama-server's own report (issue 22, items 3 and 4), on real parts: a
private user manager with journald, real llama-server units at log verbosity 4, generated GGUFs.
The parsing and the store alone are in test_learned.py."""

from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.request

import pytest

from support import harness
from support.harness import UnitSampler, chat_body, free_port, wait_for

MIB = 1 << 20
_HOST_ROW = re.compile(r"common_memory_breakdown_print: \|\s+- Host\s+\|\s+(\d+) =")


def cmd_model(llama_server, gguf, name: str, args: list[str] | None = None) -> dict:
    """A `cmd:` model running llama-server at verbosity 4 (it prints its memory breakdown then)."""
    server, env = llama_server
    port = free_port()
    server_args = harness.llama_args(server, gguf, port, name, ["-np", "1"]) if args is None else [
        server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-a", name, *args]
    argv = ["/usr/bin/env", "LLAMA_ARG_LOG_VERBOSITY=4", *(f"{k}={v}" for k, v in env.items()), *server_args]
    return {"cmd": " ".join(argv), "url": f"http://127.0.0.1:{port}"}


def start(d: harness.Deployment, um: harness.UserManager) -> harness.Daemon:
    d.reload()
    env = {**um.env, "XDG_STATE_HOME": str(d.dir / "state")}  # learned-memory.json goes here
    daemon = harness.Daemon(d.dir / "config.yaml", env, namespace_pid=um.namespace_pid,
                            log_path=d.dir / f"llm-switch-{len(d.daemons)}.log")
    d.daemons.append(daemon)
    return daemon


def memory_of(daemon: harness.Daemon, name: str) -> dict:
    return next(m for m in daemon.get_json("/status")["models"] if m["model"] == name)["memory"]


def learned(daemon: harness.Daemon, name: str) -> int | None:
    return memory_of(daemon, name)["learned"]


def ask(daemon: harness.Daemon, name: str) -> None:
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", data=json.dumps(chat_body(name, max_tokens=2))
                                 .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=180) as resp:
        assert resp.status == 200


def breakdown_self(um: harness.UserManager, unit: str) -> int:
    """The `self` of the Host row in the unit's last start, as the journal has it, in bytes."""
    rows = [int(m[1]) for e in um.journal_json(unit) if (m := _HOST_ROW.search(str(e.get("MESSAGE", ""))))]
    assert rows, f"no memory breakdown of {unit} in the journal"
    return rows[-1] * MIB


@pytest.fixture
def deployment(journal_manager, llama_server, tmp_path, request):
    d = harness.Deployment(journal_manager, tmp_path, "lm", llama=llama_server)
    failed = request.session.testsfailed
    try:
        yield d
    finally:
        if request.session.testsfailed > failed:
            harness_dump(d)
        d.close()


def harness_dump(d: harness.Deployment) -> None:
    from support.factories import dump_logs  # noqa: PLC0415

    dump_logs(d)
    for daemon in d.daemons:
        print(daemon.log())


def test_learned_memory_is_the_breakdown_survives_a_restart_and_goes_with_the_file(
        deployment, journal_manager, llama_server, tiny_models, tmp_path):
    d = deployment
    gguf = tmp_path / "mine.gguf"
    shutil.copy(tiny_models["a"], gguf)
    name = "mine-lm"
    unit = d.expect_transient(name)
    d.write_config({name: cmd_model(llama_server, gguf, name)}, memory_budget="auto", memory_reserve="1G")
    daemon = start(d, journal_manager)

    status = daemon.get_json("/status")
    with open("/proc/meminfo") as f:
        mem_total = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1]) * 1024
    assert status["memory_budget"] == mem_total - (1 << 30), status
    assert "MemTotal" in status["memory_budget_from"], status
    assert learned(daemon, name) is None  # not started yet: runs alone

    ask(daemon, name)
    wait_for(lambda: learned(daemon, name) is not None, 30, what="the learned memory in /status")
    memory = memory_of(daemon, name)
    assert abs(memory["learned"] - breakdown_self(journal_manager, unit)) <= MIB, memory
    assert memory["device"] == "Host" and memory["counted"] == memory["learned"], memory
    assert "learned memory" in daemon.log() and "from llama-server's memory breakdown" in daemon.log()
    metrics = harness.http_get(daemon.url + "/metrics")[1].decode()
    shown = re.search(rf'llm_switch_model_memory_bytes{{kind="learned",model="{name}"}} (\S+)', metrics)
    assert shown and float(shown[1]) == memory["learned"], metrics
    shown = harness.run_cli(["status", "--url", daemon.url], {"LLM_SWITCH_CONFIG": str(d.dir / "config.yaml")})
    assert re.search(r"memory budget: \S+ \(MemTotal in /proc/meminfo, less memory_reserve\)", shown.stdout), shown
    assert re.search(rf"{name}\s+ready.*memory not declared, \S+ learned on Host", shown.stdout), shown

    daemon.stop()  # the unit keeps running; a new switch adopts it and knows its memory at once
    again = start(d, journal_manager)
    assert learned(again, name) == memory["learned"]
    assert memory_of(again, name)["learned_from"].endswith("(kept from an earlier start)")
    assert journal_manager.active_units(unit) == [unit]

    again.stop()  # with nothing kept (a new state directory), an adopted unit's journal tells
    (d.dir / "state" / "llm-switch" / "learned-memory.json").unlink()
    again = start(d, journal_manager)
    wait_for(lambda: learned(again, name) == memory["learned"], 30, what="the memory learned from the journal")
    assert memory_of(again, name)["learned_from"] == "llama-server's memory breakdown"

    shutil.copy(tiny_models["b"], gguf)  # a new file under the same name
    again.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: learned(again, name) is None, 30, what="the learned memory dropped after the file changed")
    assert memory_of(again, name)["counted"] is None


def test_a_budget_that_fits_two_of_three_auto_models(deployment, journal_manager, llama_server, tiny_models,
                                                     tmp_path):
    d = deployment
    extra = tmp_path / "tiny-c.gguf"
    harness.make_model(extra, seed=3)
    files = {"a-lm": tiny_models["a"], "b-lm": tiny_models["b"], "c-lm": extra}
    for name in files:
        d.expect_transient(name)
    # each tiny model takes 2 MiB by its breakdown: two fit in 5 MiB, three do not
    d.write_config({n: cmd_model(llama_server, f, n) for n, f in files.items()}, memory_budget="5M",
                   min_loaded=0.01)
    daemon = start(d, journal_manager)
    with UnitSampler(journal_manager, "llm-switch-*-lm.service") as sampler:
        for name in files:  # first starts: each runs alone, then its memory is known
            ask(daemon, name)
            wait_for(lambda: learned(daemon, name) is not None, 30, what=f"{name}'s learned memory")
            assert _up(daemon) == [name]
        sizes = {n: memory_of(daemon, n)["counted"] for n in files}
        assert all(s is not None and 2 * s <= 5 * MIB < 3 * s for s in sizes.values()), sizes
        ask(daemon, "a-lm")  # fits beside c-lm
        assert _up(daemon) == ["a-lm", "c-lm"]
        wait_for(lambda: sampler.overlaps(), 30, what="systemd running a-lm and c-lm at once")
        ask(daemon, "b-lm")  # does not fit beside both: the least recently used (c-lm) goes
        assert _up(daemon) == ["a-lm", "b-lm"]
    assert sampler.max_active() == 2, sampler.samples  # never three: never over the budget
    assert any(set(units) == {"llm-switch-a-lm.service", "llm-switch-c-lm.service"}
               for _, units in sampler.overlaps()), sampler.samples


def _up(daemon: harness.Daemon) -> list[str]:
    return sorted(m["model"] for m in daemon.get_json("/status")["models"] if m["state"] in ("ready", "starting"))


def test_a_context_that_fit_changed_is_a_warning_naming_model_and_parameter(
        deployment, journal_manager, llama_server, tiny_models):
    d = deployment
    name = "fitted-lm"
    d.expect_transient(name)
    # no -c: --fit may set it; a free-memory target no machine meets makes it shrink the context
    args = ["--no-webui", "--no-warmup", "-t", "1", "-np", "1", "--fit-target", "1000000", "--fit-ctx", "64"]
    d.write_config({name: cmd_model(llama_server, tiny_models["a"], name, args)})
    daemon = start(d, journal_manager)
    ask(daemon, name)
    line = wait_for(lambda: next((ln for ln in daemon.log().splitlines() if "--fit changed" in ln), None), 30,
                    what="the warning about --fit")
    assert "WARNING" in line and name in line and "context size 2048 → 64" in line, line
