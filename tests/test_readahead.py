"""Read-ahead of the next model's files (issue 19): its pure parts as tables, the reader on a real
file, and on real parts: a model file dropped from the page cache is resident before its unit
starts, and nothing is read while MemAvailable is below the file plus readahead_margin."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from support import harness
from llm_switch.config.load import parse
from llm_switch.scheduling.readahead import (UnitCommand, environment, expand, mem_available, model_path,
                                             parse_environment_file, read_files, split_parts)
from llm_switch.scheduling.readahead import resident as resident_share
from llm_switch.units.systemd import Systemd

# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, env, expected", [
    (["llama-server", "-m", "/m/a.gguf", "--port", "1"], {}, "/m/a.gguf"),
    (["llama-server", "--model", "/m/a.gguf"], {}, "/m/a.gguf"),
    (["llama-server", "--model=/m/a.gguf"], {}, "/m/a.gguf"),
    (["llama-server", "--port", "1"], {"LLAMA_ARG_MODEL": "/m/env.gguf"}, "/m/env.gguf"),
    (["llama-server", "-m", "${DIR}/a.gguf"], {"DIR": "/m"}, "/m/a.gguf"),
    (["llama-server", "-m", "$MODEL"], {"MODEL": "/m/b.gguf"}, "/m/b.gguf"),
    (["/usr/bin/env", "${LLAMA_SERVER}", "$LLAMA_ARGS"], {"LLAMA_ARGS": "-c 4096 -m /m/c.gguf"}, "/m/c.gguf"),
    (["llama-server", "-m", "/m/a.gguf"], {"LLAMA_ARG_MODEL": "/m/env.gguf"}, "/m/a.gguf"),  # the flag wins
    (["llama-server", "-hf", "org/repo"], {}, None),
    (["llama-server", "-m"], {}, None),
], ids=["-m", "--model", "--model=", "env", "${VAR}", "$VAR", "$ARGS-split", "flag-wins", "none", "dangling"])
def test_model_path(argv, env, expected):
    assert model_path(argv, env) == expected


@pytest.mark.parametrize("path, expected", [
    ("/m/a.gguf", ["/m/a.gguf"]),
    ("/m/q-00002-of-00003.gguf", ["/m/q-00001-of-00003.gguf", "/m/q-00002-of-00003.gguf",
                                  "/m/q-00003-of-00003.gguf"]),
    ("/m/q-001-of-003.gguf", ["/m/q-001-of-003.gguf"]),  # not llama.cpp's split naming
])
def test_split_parts(path, expected):
    assert split_parts(path) == expected


@pytest.mark.parametrize("text, expected", [
    ("A=1\nB='two words'\n# C=3\n\nD=\"x y\"\n", {"A": "1", "B": "two words", "D": "x y"}),
    ("LLAMA_ARG_MODEL=/m/a.gguf\nnot an assignment\n; comment\n", {"LLAMA_ARG_MODEL": "/m/a.gguf"}),
])
def test_parse_environment_file(text, expected):
    assert parse_environment_file(text) == expected


def test_environment_assignments_win_over_files():
    files = {"/e/1": "M=/file.gguf\nX=1\n", "/e/2": "X=2\n"}

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    command = UnitCommand(("x",), ("M=/unit.gguf",), ("/e/1", "/e/2", "/e/missing"))
    assert environment(command, read) == {"M": "/unit.gguf", "X": "2"}
    assert expand("${M}:$X:$NONE", {"M": "a", "X": "b"}) == "a:b:"


def test_command_of_a_template_unit_with_environment_files(user_manager, tmp_path, monkeypatch):
    """What D-Bus gives for the shipped template's shape: EnvironmentFile= paths with specifiers
    resolved, ExecStart with `$VAR` left for the reader to expand."""
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "x.env").write_text("LLAMA_ARGS='-c 4096 -m /models/x.gguf'\n")
    unit = "ra-envtest@x.service"
    user_manager.write_unit("ra-envtest@.service", f"[Service]\nEnvironmentFile={env_dir}/%i.env\n"
                            "Environment=A=1\nExecStart=/usr/bin/env ${A} $LLAMA_ARGS\n", reload=True)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", user_manager.env["DBUS_SESSION_BUS_ADDRESS"])

    async def read() -> UnitCommand:
        systemd = Systemd()
        try:
            return await systemd.command(unit)
        finally:
            await systemd.close()

    try:
        command = asyncio.run(read())
    finally:
        user_manager.remove_unit("ra-envtest@.service", reload=True)
    assert command.environment_files == (f"{env_dir}/x.env",)
    assert command.environment == ("A=1",)
    assert command.argv == ("/usr/bin/env", "${A}", "$LLAMA_ARGS")
    assert model_path(command.argv, environment(command, lambda p: Path(p).read_text())) == "/models/x.gguf"


def test_mem_available():
    assert mem_available("MemTotal:  100 kB\nMemAvailable:   2048 kB\n") == 2 << 20
    assert mem_available("MemTotal:  100 kB\n") is None


def test_config_keys():
    text = """
models:
  a: {unit: a.service}
  b: {unit: b.service, readahead: false}
readahead_margin: 3G
"""
    config = parse(text)
    assert (config.models["a"].readahead, config.models["b"].readahead, config.readahead_margin) == (True, False, 3 << 30)
    off = parse("readahead: false\nmodels:\n  a: {unit: a.service, readahead: true}\n  b: b.service\n")
    assert (off.models["a"].readahead, off.models["b"].readahead, off.readahead_margin) == (True, False, 2 << 30)


# -- the reader, on a real file -----------------------------------------------------------------


def test_read_files_reads_every_part_and_stops_when_told(tmp_path):
    parts = [tmp_path / f"m-0000{i}-of-00002.gguf" for i in (1, 2)]
    for p in parts:
        p.write_bytes(os.urandom(3 << 20))
    done = read_files("m", [str(p) for p in parts], 0, threading.Event())
    assert (done.read, done.size, done.skipped) == (6 << 20, 6 << 20, None)
    stop = threading.Event()
    stop.set()
    assert read_files("m", [str(parts[0])], 0, stop).skipped == "cancelled"
    low = read_files("m", [str(parts[0])], 1 << 40, threading.Event())  # the real MemAvailable
    assert low.read == 0 and low.skipped.startswith("MemAvailable")
    assert resident_share(str(parts[0])) == 1.0  # just read: mincore sees every page
    missing = read_files("m", [str(tmp_path / "gone.gguf")], 0, threading.Event())
    assert missing.read == 0 and missing.skipped.startswith("cannot read")


# -- on real parts ------------------------------------------------------------------------------

ANSWER = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "late"}}]}


@pytest.fixture(scope="module")
def big_model():
    """A ~400 MB model on the disk (not tmpfs, whose pages cannot be dropped); removed afterwards."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        yield harness.make_model(Path(d) / "readahead-big.gguf", seed="readahead", hidden=1024, blocks=8, ffn=2816)


def resident(path: Path) -> int:
    """Bytes of `path` in the page cache (fincore, util-linux)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def drop_from_cache(path: Path) -> None:
    """Evict `path` from the page cache: its own pages first, else the whole cache (as root)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if resident(path) > path.stat().st_size // 20:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    assert resident(path) <= path.stat().st_size // 20, f"{path} stays in the page cache: {resident(path)} bytes"


def chat_in_background(url: str, model: str) -> threading.Thread:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()

    def send() -> None:
        req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=120).read()
        except OSError:
            pass  # the test ended first and stopped the daemon

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def busy_a_then_b(deploy, big_model: Path, **top) -> tuple:
    """A scripted model `a` busy with a 15 s answer and a request for the big model `b` queued
    behind it (within a's min_loaded window, then its drain)."""
    a = deploy.scripted_unit("a", {"routes": {"/v1/chat/completions": {"delay": 15, "json": ANSWER}}})
    b = deploy.llama_unit("b", big_model)
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}}, **top)
    drop_from_cache(big_model)
    chat_in_background(daemon.url, "a")
    harness.wait_for(lambda: a.records("request"), 30, what="a's request to arrive")
    chat_in_background(daemon.url, "b")
    return a, b, daemon


def test_the_next_models_file_is_resident_before_its_unit_starts(deploy, big_model):
    _a, b, daemon = busy_a_then_b(deploy, big_model)
    size = big_model.stat().st_size
    harness.wait_for(lambda: resident(big_model) >= size * 0.95, 60, what=f"{big_model} resident")
    assert not b.runs(), "b's unit started before its file was read ahead"
    harness.wait_for(lambda: "b: read ahead" in daemon.log(), 30, what="the read-ahead's log line")


def test_no_read_ahead_when_memory_available_is_below_file_plus_margin(deploy, big_model):
    _a, b, daemon = busy_a_then_b(deploy, big_model, readahead_margin="1T")
    harness.wait_for(lambda: "b: not read ahead" in daemon.log(), 30, what="the read-ahead to be refused")
    assert "MemAvailable" in daemon.log() and "readahead_margin 1T" in daemon.log()
    assert not b.runs()
    assert resident(big_model) <= big_model.stat().st_size // 20


def test_preload_reads_the_next_preloaded_model_while_the_first_loads(deploy, big_model):
    slow = deploy.scripted_unit("slow", {"health": {"ok_after": 15}})
    b = deploy.llama_unit("b", big_model)
    drop_from_cache(big_model)
    daemon = deploy.up({"slow": {"unit": slow.unit, "url": slow.url}, "b": {"unit": b.unit, "url": b.url}},
                       preload=["slow", "b"])
    harness.wait_for(lambda: "b: read ahead" in daemon.log(), 60, what="the read-ahead's log line")
    assert resident(big_model) >= big_model.stat().st_size * 0.95
    assert not b.runs(), "b's unit started before its file was read ahead"
