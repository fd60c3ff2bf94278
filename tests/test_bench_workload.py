"""The agent-session workload (``bench/workload.py --quick``) and the budget stress
(``bench/stress.py``) run end to end: smoke checks of the two benches.

Each starts its own private user manager, llama-server units, llama.cpp routers and daemons, like
the other end-to-end tests. No timing is asserted (machines differ); only that every method is
there with real figures, that nothing failed, and that under stress no request was lost and the
running set never broke the budget or the shared-URL rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_METHODS = {"router-max1", "router-all", "switch", "switch-exclusive", "switch-cache"}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN


def _run(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_SWITCH_BENCH_CACHE": str(tmp_path / "cache")}  # models made here, not in bench/
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_workload_quick_runs_every_method(tmp_path):
    out = tmp_path / "workload.json"
    res = _run(tmp_path, "workload.py", "--quick", "--out", str(out))
    assert res.returncode == 0, f"workload failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    assert "| router-max1 |" in res.stdout  # the table was printed
    data = json.loads(out.read_text())
    assert data["errors"] == []
    assert set(data["methods"]) == DEFAULT_METHODS
    turns = data["plan"]["turns"]
    thinker_turns = sum(1 for t in range(1, turns + 1) if t % 3 == 2)
    for name, m in data["methods"].items():
        assert m["errors"] == [], name
        assert m["requests"] == 2 * turns + thinker_turns, name
        for key in ("total_s", "coder_s", "thinker_s", "embed_s", "coder_ttft_after_thinker_s"):
            assert _number(m[key]) and m[key] > 0, (name, key, m[key])
        # every model was started at least once, counted from outside the daemon
        assert set(m["loads_by_model"]) == {"coder", "thinker", "embed"}
        assert all(isinstance(n, int) and n >= 1 for n in m["loads_by_model"].values()), (name, m["loads_by_model"])
        assert m["loads"] == sum(m["loads_by_model"].values())
        assert all(_number(r["s"]) and r["s"] > 0 for r in m["records"])
        assert all(_number(r["ttft_s"]) for r in m["records"] if r["model"] != "embed")
    # all three resident: each model loads once; one at a time: the coder reloads every turn
    assert data["methods"]["router-all"]["loads"] == 3
    assert data["methods"]["router-max1"]["loads_by_model"]["coder"] == turns
    assert data["methods"]["switch-exclusive"]["loads_by_model"]["coder"] == turns
    assert [t["target"] for t in data["targets"]] == [
        "switch / router-max1 total", "switch-cache / router-all total", "switch-cache / router-max1 total",
        "switch-cache / switch coder TTFT after the thinker"]
    assert all(_number(t["value"]) for t in data["targets"])
    # the prompt cache saved the coder's slot when the thinker came, and restored it after
    assert data["methods"]["switch-cache"]["prompt_cache"]["coder"]["last_restore"] is not None, \
        data["methods"]["switch-cache"].get("prompt_cache")


def test_stress_loses_nothing_and_keeps_the_budget(tmp_path):
    out = tmp_path / "stress.json"
    res = _run(tmp_path, "stress.py", "--requests", "60", "--clients", "12", "--out", str(out))
    assert res.returncode == 0, f"stress failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    data = json.loads(out.read_text())
    assert data["answered"] == 60
    assert data["lost"] == 0, data["lost_examples"]
    assert data["violations_sampled"] == 0, data["violations_sampled_examples"]
    assert data["violations_exact"] == 0, data["violations_exact_examples"]
    assert data["samples"] > 10
    assert data["loads"] >= sum(1 for n in data["by_model"].values() if n)
    for key in ("latency_p50_s", "latency_p95_s", "latency_max_s", "wall_s"):
        assert _number(data[key]) and data[key] > 0, key


@pytest.mark.unit
def test_stress_rules_catch_overlaps():
    """The checks that the stress relies on find what they should (so zero means something)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import stress  # noqa: PLC0415

    mem = {m: stress.size_bytes("300M") for m in "abc"}
    budget = stress.size_bytes("700M")
    assert budget == 700 * 1024 ** 2 and stress.size_bytes("1G") == 1024 ** 3 and stress.size_bytes("512") == 512
    assert stress.broken_rules(("a", "c"), mem, budget) == []
    assert len(stress.broken_rules(("a", "b"), mem, budget)) == 1  # shared URL
    assert len(stress.broken_rules(("a", "b", "c"), mem, budget)) == 2  # and the budget
    # b starts while a still runs: caught; c starts the instant a stops: not an overlap
    runs = {"a": [(1.0, 2.0)], "b": [(1.5, 3.0)], "c": [(2.0, float("inf"))]}
    bad = stress.exact_violations(runs, mem, budget)
    assert [(v["starting"], v["running"]) for v in bad] == [("b", ["a", "b"])]
    assert stress.exact_violations({"a": [(1.0, 2.0)], "b": [(2.0, 3.0)], "c": [(0.0, 9.0)]}, mem, budget) == []
