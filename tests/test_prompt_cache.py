"""The prompt cache across switches, on real parts: llama-server units with --slot-save-path, a
generated model large enough that prefill shows, the daemon as users run it. Whether a prompt was
prefilled again is read from llama-server's own `timings` (cache_n, prompt_n), never from a clock."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import aiohttp
import pytest

from support.harness import chat_body, make_model, post_json
from llm_switch.scheduling.prompt_cache import FILE, over_budget

MID = {"hidden": 256, "blocks": 4, "ffn": 704, "ctx": 4096}  # ~13 MB; ~1.2k tokens take a visible prefill
PROMPT_CHARS = 1200  # the generated vocabulary: one token per character


@pytest.fixture(scope="module")
def mid_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mid-models")
    return {"a": make_model(d / "mid-a.gguf", seed=11, **MID), "c": make_model(d / "mid-c.gguf", seed=12, **MID)}


def prompt(seed: int, chars: int = PROMPT_CHARS) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnop ") for _ in range(chars))


def cached_unit(deploy, name: str, model: Path, slots: Path | None):
    """A two-slot llama-server unit with 4096 tokens per slot; saves slots under `slots`/name."""
    args = ["-c", "8192", "-t", "2"]
    if slots is not None:
        (slots / name).mkdir(parents=True, exist_ok=True)
        args += ["--slot-save-path", str(slots / name)]
    return deploy.llama_unit(name, model, extra_args=args)


async def ask(http, daemon, model: str, text: str) -> dict:
    """One chat request; llama-server's timings of it."""
    status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions", chat_body(model, text, max_tokens=2))
    assert status == 200, body
    return body["timings"]


def slot_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if FILE.match(p.name)) if folder.is_dir() else []


def cache_status(daemon, name: str) -> dict:
    return {m["model"]: m for m in daemon.get_json("/status")["models"]}[name]["prompt_cache"]


async def test_switching_back_restores_every_slot_and_skips_a_backend_without_save_path(
        deploy, mid_models, tiny_models, tmp_path):
    slots = tmp_path / "slots"
    a = cached_unit(deploy, "a", mid_models["a"], slots)
    b = deploy.llama_unit("b", tiny_models["b"])  # no --slot-save-path: works, without the cache
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       prompt_cache_dir=str(slots), health_timeout=120)
    one, two = prompt(1), prompt(2)
    async with aiohttp.ClientSession() as http:
        # two conversations at once: one in each of a's two slots
        cold = await asyncio.gather(ask(http, daemon, "a", one), ask(http, daemon, "a", two))
        assert all(t["cache_n"] == 0 and t["prompt_n"] > 1000 for t in cold), cold
        await ask(http, daemon, "b", "hello")  # a's slots are saved, a stops
        files = slot_files(slots / "a")
        assert len(files) == 2, files
        warm = [await ask(http, daemon, "a", one), await ask(http, daemon, "a", two)]
    for before, after in zip(cold, warm):
        assert after["cache_n"] >= before["prompt_n"] - 1 and after["prompt_n"] <= 2, (cold, warm)
    log = daemon.log()
    assert re.search(r"a: saved 2 slots \([\d.]+M, \d+ tokens\) in \d+\.\d\d s", log), log
    assert re.search(r"a: restored 2 slots \([\d.]+M, \d+ tokens\) in \d+\.\d\d s", log), log
    assert log.count("b: prompt cache off: its backend has no --slot-save-path") == 1, log
    status = cache_status(daemon, "a")
    assert status["state"] == "on" and status["files"] == 2, status
    assert status["last_save"]["slots"] == 2 and status["last_restore"]["tokens"] > 2000, status
    assert cache_status(daemon, "b")["state"] == "off"


async def test_a_replaced_model_file_is_not_restored(deploy, tmp_path, tiny_models):
    """Same path, same shape, other weights: llama.cpp would restore the old cache into it."""
    model = make_model(tmp_path / "models" / "a.gguf", seed=21, **MID)
    slots = tmp_path / "slots"
    a = cached_unit(deploy, "a", model, slots)
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       prompt_cache_dir=str(slots), health_timeout=120)
    text = prompt(3)
    async with aiohttp.ClientSession() as http:
        await ask(http, daemon, "a", text)
        await ask(http, daemon, "b", "hello")
        [old] = slot_files(slots / "a")
        make_model(model, seed=22, **MID)  # the GGUF is replaced while a is stopped
        again = await ask(http, daemon, "a", text)
        assert again["cache_n"] == 0 and again["prompt_n"] > 1000, again
        assert not old.exists()
    assert f"a: deleted slot file {old.name}: saved from another model file" in daemon.log()


async def test_the_disk_budget_deletes_the_least_recently_used_files(deploy, mid_models, tmp_path):
    slots = tmp_path / "slots"
    a = cached_unit(deploy, "a", mid_models["a"], slots)
    c = cached_unit(deploy, "c", mid_models["c"], slots)
    # one ~1.2k-token file is ~5 MB here: the budget holds one, not two
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "c": {"unit": c.unit, "url": c.url}},
                       prompt_cache_dir=str(slots), prompt_cache_max="7M", health_timeout=120)
    async with aiohttp.ClientSession() as http:
        await ask(http, daemon, "a", prompt(4))
        await ask(http, daemon, "c", prompt(5))  # a saved: one file
        assert len(slot_files(slots / "a")) == 1
        back = await ask(http, daemon, "a", prompt(4))  # c saved: a's older file is deleted first
        assert slot_files(slots / "a") == [] and len(slot_files(slots / "c")) == 1
        assert back["cache_n"] == 0, back
    assert "deleted 1 least recently used slot file(s) to stay within prompt_cache_max 7M" in daemon.log()


async def test_a_failed_save_or_a_short_restore_costs_only_the_cache(deploy, mid_models, tiny_models, tmp_path):
    slots = tmp_path / "slots"
    a = cached_unit(deploy, "a", mid_models["a"], slots)
    b = deploy.llama_unit("b", tiny_models["b"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                       prompt_cache_dir=str(slots), health_timeout=120)
    text = prompt(6)
    async with aiohttp.ClientSession() as http:
        # the save fails: llama-server cannot write its file; the switch goes on
        await ask(http, daemon, "a", text)
        (slots / "a").rename(slots / "gone")
        await ask(http, daemon, "b", "hello")
        assert "a: slot" in daemon.log() and "not saved" in daemon.log()
        (slots / "gone").rename(slots / "a")
        # a restore that brings back fewer tokens than were saved (as llama.cpp does for SWA and
        # hybrid models): a warning, and the cache is off for that model file
        await ask(http, daemon, "a", text)
        await ask(http, daemon, "b", "hello")
        [saved] = slot_files(slots / "a")
        m = FILE.match(saved.name)
        saved.rename(saved.with_name(f"{m['identity']}-slot{m['slot']}-{int(m['tokens']) + 500}.bin"))
        again = await ask(http, daemon, "a", text)
        assert again["prompt_n"] > 0
        await ask(http, daemon, "b", "hello")
    log = daemon.log()
    assert re.search(r"WARNING.*a: prompt cache off: llama.cpp restored less than was saved \(slot \d: \d+ of \d+ "
                     r"tokens\)", log), log
    assert slot_files(slots / "a") == []  # nothing saved while it is off
    status = cache_status(daemon, "a")
    assert status["state"] == "off" and "restored less" in status["reason"]
    assert {m["model"]: m["state"] for m in daemon.get_json("/status")["models"]} == {"a": "stopped", "b": "ready"}


@pytest.mark.unit
def test_over_budget_picks_the_oldest_first():
    class St:
        def __init__(self, size: int, mtime: int) -> None:
            self.st_size, self.st_mtime_ns = size, mtime

    files = [(Path("new"), St(5, 30)), (Path("old"), St(5, 10)), (Path("mid"), St(5, 20))]
    assert over_budget(files, 15) == []
    assert over_budget(files, 14) == [Path("old")]
    assert over_budget(files, 5) == [Path("old"), Path("mid")]
    assert over_budget(files, 1) == [Path("old"), Path("mid"), Path("new")]
