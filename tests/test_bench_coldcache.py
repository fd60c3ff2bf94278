"""The cold-cache bench (``bench/coldcache.py --quick``) runs end to end: a smoke check. It evicts
a ~400 MB generated model from the page cache and times switches to it; no timing is asserted
(machines differ), only that every case is there with a real figure and the reader filled the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_coldcache_quick_measures_every_case(tmp_path):
    out = tmp_path / "coldcache.json"
    # the model on the disk (/var/tmp), not a tmpfs whose pages cannot be evicted
    cache = Path("/var/tmp") / f"llm-switch-coldcache-test-{os.getpid()}"
    env = {**os.environ, "LLM_SWITCH_BENCH_CACHE": str(cache)}
    try:
        res = subprocess.run([sys.executable, str(ROOT / "bench" / "coldcache.py"), "--quick", "--out", str(out)],
                             capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)
    assert res.returncode == 0, f"coldcache failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    assert "| switch, read ahead while A finishes |" in res.stdout
    data = json.loads(out.read_text())
    assert len(data["summary"]) == 11
    assert all(v["median_s"] > 0 for v in data["summary"].values())
    assert data["readers"]["reader_resident"] > 0.95
    assert any("b-ra: read ahead" in (r.get("readahead_line") or "") for r in data["rows"])
