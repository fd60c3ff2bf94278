"""The benchmark runs end to end (``bench/run.py --quick``): a smoke check of the bench itself.

It starts its own private user manager, llama-server units, scripted backends and the daemon, like
the other end-to-end tests. No timing is asserted (machines differ); only that every section is
there with real values and that nothing failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN


def test_bench_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "LLM_SWITCH_BENCH_CACHE": str(tmp_path / "cache")}  # models made here, not in bench/
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert res.returncode == 0, f"bench failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    assert "Targets" in res.stdout  # the table was printed
    data = json.loads(out.read_text())
    assert data["errors"] == []

    tiny = data["switch_latency"]["tiny"]
    for method in ("floor", "switch", "router"):
        assert _number(tiny[method]["median_s"]) and tiny[method]["median_s"] > 0, method
        assert len(tiny[method]["samples_s"]) == tiny["rounds"] > 0
    for key in ("switch_vs_router", "switch_vs_floor", "router_vs_floor"):
        assert _number(tiny[key]) and tiny[key] > 0, key
    assert set(tiny["floor"]["breakdown_median_s"]) == {"stop_s", "start_job_s", "health_s", "request_s"}

    cells = data["relay"]["cells"]
    # per backend: httpx keep-alive and new connection × chat and completions, aiohttp 1 and many clients
    for backend in ("scripted", "llama_server"):
        mine = [c for c in cells if c["backend"] == backend]
        assert {(c["client"], c["connection"], c["path"]) for c in mine if c["concurrency"] == 1} == {
            ("httpx", conn, path) for conn in ("keep-alive", "new") for path in ("chat", "completions")
        } | {("aiohttp", "keep-alive", "chat")}, backend
        assert any(c["concurrency"] > 1 for c in mine), backend
    for row in cells:
        for target in ("direct", "switch"):
            assert row[target]["n"] > 0
            for key in ("p50_ms", "p99_ms", "throughput_rps"):
                assert _number(row[target][key]) and row[target][key] > 0, (row, target, key)
        assert _number(row["switch"]["added_p50_ms"]) and _number(row["switch"]["added_p50_ms_paired"])

    st = data["streaming"]
    for target in ("direct", "switch"):
        assert st[target]["errors"] == 0
        assert _number(st[target]["chunks_per_s"]) and st[target]["chunks_per_s"] > 0
        assert _number(st[target]["ttfc_ms"])
        # every chunk arrived: the scripted backend's events plus its [DONE]
        assert all(n == st["events_per_stream"] + 1 for n in st[target]["events"]), st[target]["events"]
    assert _number(st["rate_ratio"]) and st["rate_ratio"] > 0

    mc = data["many_clients"]
    assert mc["errors"] == 0 and mc["direct"]["errors"] == 0
    assert mc["streams_ok"] == mc["clients"] > 0
    assert mc["events"] == mc["clients"] * mc["events_per_stream"]
    for key in ("ttfc_p50_ms", "ttfc_p99_ms", "daemon_cpu_s", "daemon_peak_rss_mb", "daemon_rss_mb_after"):
        assert _number(mc[key]), key
    assert mc["daemon_peak_rss_mb"] > 0

    assert _number(data["daemon"]["peak_rss_mb_whole_run"]) and data["daemon"]["peak_rss_mb_whole_run"] > 0
    assert _number(data["daemon"]["cpu_s_total"])
    assert {t["target"] for t in data["targets"]} >= {
        "tiny: switch / router", "streaming relay / direct chunk rate",
        *(f"added p50, {b} {p}, keep-alive (ms, paired)" for b in ("scripted", "llama_server")
          for p in ("chat", "completions"))}
    assert all(t["value"] is not None for t in data["targets"])
