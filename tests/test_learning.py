"""scheduling/learning.py: what the budget counts for a model after its start taught its memory,
where the budget comes from, and which source a figure had. The start's log is given as a list
of lines (what journalctl would give); the e2e tests are in test_learned_memory.py."""

from __future__ import annotations

import logging

import pytest

from llm_switch.config import Config, Model
from llm_switch.events import MemoryMeasured
from llm_switch.learned.store import LearnedStore
from llm_switch.scheduling.learning import Learning

pytestmark = pytest.mark.unit

MIB, GIB = 1 << 20, 1 << 30
CPU = ["common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute |",
       "common_memory_breakdown_print: |   - Host               |                  550 =   393 +     128 +      28 |",
       "main: server is listening on http://127.0.0.1:8080"]
GPU = ["common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute |",
       "common_memory_breakdown_print: |   - CUDA0 (RTX 4070)   | 12282 = 3000 + (8900 =  7800 +  900 +  200) + 382 |",
       "common_memory_breakdown_print: |   - Host               |                  550 =   393 +     128 +      28 |",
       "common_params_fit_impl: context size reduced from 32768 to 8192",
       "srv  llama_server: listening on http://127.0.0.1:8080"]


def config(**top) -> Config:
    models = {"a": Model("a", "a.service", "http://127.0.0.1:3004", memory=top.pop("declared", None),
                         memory_auto="declared" not in top, cmd=("llama-server", "-m", top.pop("gguf", "/x.gguf")))}
    return Config("127.0.0.1", 3002, models, names={"a": "a"}, **top)


def learning(cfg: Config, lines: list[str], store: LearnedStore | None = None, nvml: dict | None = None) -> Learning:
    async def start_log(unit: str, since: float) -> list[str]:
        return lines

    return Learning(cfg, start_log, store, (nvml or {}).get)


@pytest.mark.parametrize("top,lines,measured,device,counted,source", [
    ({"memory_budget": 4 * GIB}, CPU, None, "Host", 550 * MIB, "llama-server's memory breakdown"),
    ({"memory_budget": 4 * GIB}, GPU, None, "CUDA0", 8900 * MIB, "llama-server's memory breakdown"),
    ({"memory_budget": 4 * GIB, "memory_device": "Host"}, GPU, None, "Host", 550 * MIB, "llama-server's"),
    ({"memory_budget": 4 * GIB}, ["main: server is listening"], MemoryMeasured("a", None, 300 * MIB, None),
     "Host", 300 * MIB, "measured: no memory breakdown in the log"),
    ({"memory_budget": 4 * GIB}, [], None, "Host", None, None),  # nothing known: runs alone
    ({"memory_budget": 4 * GIB, "declared": GIB}, GPU, None, "CUDA0", GIB, "llama-server's"),  # declared wins
])
async def test_what_the_budget_counts_after_a_start(top, lines, measured, device, counted, source):
    cfg = config(**top)
    ln = learning(cfg, lines)
    assert ln.counted(cfg.models["a"]) == top.get("declared")
    await ln.learn(cfg.models["a"], 0.0, measured)
    assert (ln.device, ln.counted(cfg.models["a"])) == (device, counted)
    assert (ln.source("a") or "").startswith(source or "")


@pytest.mark.parametrize("top,lines,budget,source", [
    ({"memory_budget": 4 * GIB, "memory_budget_from": "config"}, GPU, 4 * GIB, "config"),
    ({"memory_budget": 15 * GIB, "memory_budget_auto": True, "memory_budget_from": "MemTotal in /proc/meminfo",
      "memory_reserve": GIB}, CPU, 15 * GIB, "MemTotal in /proc/meminfo"),
    # Host's MemTotal until a breakdown names a GPU; then that GPU's total less the reserve
    ({"memory_budget": 15 * GIB, "memory_budget_auto": True, "memory_budget_from": "MemTotal in /proc/meminfo",
      "memory_reserve": 512 * MIB}, GPU, 12282 * MIB - 512 * MIB, "CUDA0 total in llama-server's memory breakdown"),
    ({"memory_budget": None, "memory_budget_auto": True, "memory_device": "Vulkan0", "memory_reserve": 0}, GPU,
     None, "no total known for Vulkan0 yet"),  # the named device never appeared: every model runs alone
    # a GPU named in the config: NVML's total before any breakdown
    ({"memory_budget": None, "memory_budget_auto": True, "memory_device": "CUDA0", "memory_reserve": GIB}, [],
     79 * GIB, "CUDA0 total from NVML, less memory_reserve"),
])
async def test_where_the_budget_comes_from(top, lines, budget, source):
    cfg = config(**top)
    ln = learning(cfg, lines, nvml={"CUDA0": 80 * GIB})
    await ln.learn(cfg.models["a"], 0.0, None)
    got, got_from = ln.budget()
    assert got == budget
    assert (got_from or "").startswith(source or "")


async def test_a_learned_figure_far_over_the_declared_one_is_logged_once(caplog):
    cfg = config(memory_budget=4 * GIB, declared=400 * MIB)
    ln = learning(cfg, CPU)
    await ln.learn(cfg.models["a"], 0.0, None)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert ln.counted(cfg.models["a"]) == 400 * MIB
    over = [r.getMessage() for r in caplog.records if "more than the declared" in r.getMessage()]
    assert len(over) == 1 and "0.54G" in over[0] and "0.39G" in over[0], over


async def test_fit_changes_are_a_warning_naming_model_and_parameter(caplog):
    cfg = config(memory_budget=4 * GIB)
    with caplog.at_level(logging.WARNING):
        await learning(cfg, GPU).learn(cfg.models["a"], 0.0, None)
    said = "a: llama-server's --fit changed a setting to fit the memory free at its start: context size 32768 → 8192;"
    assert any(said in r.getMessage() for r in caplog.records), caplog.text


async def test_kept_across_restarts_and_dropped_with_the_file(tmp_path):
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    cfg = config(memory_budget=4 * GIB, gguf=str(gguf))
    store = tmp_path / "learned-memory.json"
    await learning(cfg, CPU, LearnedStore(store)).learn(cfg.models["a"], 0.0, None)
    again = learning(cfg, [], LearnedStore(store))  # a restart of the switch
    again.recall(cfg.models["a"])
    assert again.learned("a") == 550 * MIB
    gguf.write_bytes(b"GGUF" + bytes(90))
    again.recall(cfg.models["a"])
    assert again.learned("a") is None
