"""The harness itself: what the other tests stand on must hold on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import harness


def test_user_manager_with_journal_runs_units_and_leaves_nothing_behind(tmp_path):
    with harness.UserManager(journal=True) as um:
        cgroup_dirs = um._cgroup_dirs()
        assert cgroup_dirs, "the manager did not get its own cgroup"
        um.write_unit("hello.service", harness.unit_text(
            ["/bin/sh", "-c", 'echo "plain line"; echo "<3>an error line"; exec sleep 600']),
            reload=True)
        um.systemctl("start", "hello.service")
        assert um.active_units("hello*") == ["hello.service"]
        pid = int(um.show("hello.service", "MainPID")["MainPID"])
        assert pid > 0

        entries = harness.wait_for(
            lambda: [e for e in um.journal_json("hello.service")
                     if e.get("MESSAGE") == "an error line"], 30, what="the journal line")
        assert entries[0]["PRIORITY"] == "3"
        assert any(e.get("MESSAGE") == "plain line" for e in um.journal_json("hello.service"))
        manager_pid, journald_pid = um.proc.pid, um.journald_pid
    # close(): the manager, its unit's process and journald are gone, and so is the cgroup
    for p in (pid, manager_pid, journald_pid):
        assert not _alive(p), p
    assert not any(d.exists() for d in cgroup_dirs)
    assert not um.dir.exists()


def test_units_of_two_managers_do_not_share_cgroups():
    """Same unit name in two managers (other tests, other people's runs): stopping one must not
    kill the other's process."""
    with harness.UserManager() as one, harness.UserManager() as two:
        for um in (one, two):
            um.write_unit("same.service", harness.unit_text(["/bin/sleep", "600"]), reload=True)
            um.systemctl("start", "same.service")
        pid_two = int(two.show("same.service", "MainPID")["MainPID"])
        one.systemctl("stop", "same.service")
        assert two.active_units("same*") == ["same.service"]
        assert _alive(pid_two)


@pytest.mark.unit
def test_make_model_is_deterministic_per_seed(tmp_path):
    a1 = harness.make_model(tmp_path / "a1.gguf", seed=1).read_bytes()
    a2 = harness.make_model(tmp_path / "a2.gguf", seed=1).read_bytes()
    b = harness.make_model(tmp_path / "b.gguf", seed=2).read_bytes()
    assert a1 == a2 and a1 != b
    assert len(a1) < 2_000_000


@pytest.mark.unit
def test_find_llama_server_prefers_the_environment_variable(monkeypatch, tmp_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LLAMA_SERVER", str(fake))
    assert harness.find_llama_server() == (str(fake), {})
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "missing"))
    try:
        harness.find_llama_server()
    except harness.HarnessError as exc:
        assert "LLAMA_SERVER" in str(exc)
    else:
        raise AssertionError("a wrong $LLAMA_SERVER must fail loudly")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie is dead, just not reaped yet
