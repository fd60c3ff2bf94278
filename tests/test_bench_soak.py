"""The soak (``bench/soak.py``) runs end to end for half a minute: a smoke check of the bench.

No timing, growth or loss is asserted (half a minute says little about leaks, machines differ,
and the verdict is the soak's own exit status); only that it ran its mixed load with switches,
sampled the daemon and reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_soak_half_a_minute_reports_rss_and_fds(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "LLM_SWITCH_BENCH_CACHE": str(tmp_path / "cache")}  # models made here, not in bench/
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.5", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    data = json.loads(out.read_text())
    assert isinstance(data["lost"], int) and len(data["lost_examples"]) == min(data["lost"], 10)
    assert "RSS:" in res.stdout and "open fds:" in res.stdout  # the report was printed
    assert data["answered"] > 0 and data["loads"] >= 2
    assert len(data["samples"]) >= 5
    for key in ("rss_mb", "fds"):
        assert {"first", "max", "start", "end", "growth", "slope_per_hour"} <= set(data[key])
        assert data[key]["max"] > 0
    assert set(data["verdict"]) == {"rss_ok", "fds_ok", "no_lost"}
    # the exit status follows the verdict (growth in half a minute is not judged here)
    assert res.returncode == (0 if all(data["verdict"].values()) else 1), res.stderr[-3000:]
