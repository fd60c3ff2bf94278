"""Micro-benchmark: what tool-call repair costs.

    python bench/repair_cost.py [--quick]

Reports, per call: repair of valid vs broken arguments (small, medium, large), a non-streaming
completion, and for streams the time from feeding one upstream text-delta event to getting its
bytes back (the delay repair adds to every token), plus the cost per held argument fragment.
Pure CPU, no I/O: run it anywhere; compare figures only within one run on one machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_switch.repair import StreamRepair, repair_arguments, repair_completion  # noqa: E402

logging.getLogger("llm_switch.repair").setLevel(logging.ERROR)  # fallbacks would log per call


def timeit(fn, n: int) -> tuple[float, float]:
    """(median, p99) seconds per call over n calls, timed one by one."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    return statistics.median(times) / 1e9, times[min(len(times) - 1, int(len(times) * 0.99))] / 1e9


def us(s: float) -> str:
    return f"{s * 1e6:9.1f} µs"


def chunk(delta: dict, finish: str | None = None) -> bytes:
    c = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "qwen3-coder-flash",
        "system_fingerprint": "b1-abc",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\n\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    n = 300 if ap.parse_args().quick else 3000

    code = "def f(x):\n    return x * 2  # ü\n" * 40
    args = {
        "small": {"path": "src/main.py", "line": 12},
        "medium (2 KB)": {"path": "src/app.py", "content": code[:2000]},
        "large (50 KB)": {"path": "src/big.py", "content": (code * 40)[:50000]},
    }
    print(f"python {sys.version.split()[0]}, {n} iterations per row\n")
    print("repair_arguments (one tool call)          median        p99")
    for label, obj in args.items():
        valid = json.dumps(obj, ensure_ascii=False)
        broken = valid[:-1] + ",}"  # trailing comma
        truncated = valid[: len(valid) * 2 // 3]
        quotes = valid.replace('"', "'")  # single quotes: needs json-repair proper
        reps = max(30, n // (10 if "large" in label else 1))
        cases = (("valid", valid), ("trailing comma", broken), ("truncated", truncated), ("single quotes", quotes))
        for kind, s in cases:
            if kind == "single quotes" and "large" in label:
                reps = 10
            med, p99 = timeit(lambda s=s: repair_arguments(s, "f"), reps)
            print(f"  {label:14s} {kind:15s} {us(med)} {us(p99)}")

    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": a}}
                        for a in ('{"path": "a.py"}', "{'path': 'b.py',}")
                    ],
                },
            }
        ]
    }
    med, p99 = timeit(lambda: repair_completion(copy.deepcopy(body), True), n)
    med0, _ = timeit(lambda: copy.deepcopy(body), n)
    print(f"\nrepair_completion, 2 calls (1 broken)      {us(med - med0)} (deepcopy of the body subtracted)")

    print("\nstream: feed(one text-delta event) → bytes out   median        p99")
    delta_ev = chunk({"content": " word"})
    lt_ev = chunk({"content": " a < b"})
    for label, tools, ev in (
        ("tools not offered", False, delta_ev),
        ("tools offered", True, delta_ev),
        ("tools offered, text with '<'", True, lt_ev),
    ):
        r = StreamRepair(tools)
        r.feed(chunk({"role": "assistant", "content": "Hi"}))
        med, p99 = timeit(lambda r=r, ev=ev: r.feed(ev), n * 10)
        assert r.feed(ev)
        print(f"  {label:30s} {us(med)} {us(p99)}")
    base = json.loads  # floor: what one JSON parse of the event costs
    payload = delta_ev[6:-2]
    med, _ = timeit(lambda: base(payload), n * 10)
    print(f"  {'(floor: json.loads of the event)':30s} {us(med)}")

    print("\nstream: one tool call, 2 KB arguments in 200 fragments")
    frags = [json.dumps(args["medium (2 KB)"])[i : i + 10] for i in range(0, 2000, 10)]
    events = [chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "w", "arguments": ""}}]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in frags]
    events.append(chunk({}, "tool_calls"))
    events.append(b"data: [DONE]\n\n")

    def whole_stream() -> None:
        r = StreamRepair(True)
        for ev in events:
            r.feed(ev)
        r.close()

    med, p99 = timeit(whole_stream, max(30, n // 10))
    print(f"  whole stream {us(med)}  = {us(med / len(events))} per event")

    text_events = [chunk({"content": f" w{i}"}) for i in range(1000)]

    def text_stream() -> None:
        r = StreamRepair(True)
        for ev in text_events:
            r.feed(ev)
        r.close()

    med, _ = timeit(text_stream, max(10, n // 30))
    print(f"\nstream: 1000 text deltas, tools offered: {med * 1e3:.2f} ms in all ({us(med / 1000)} per token)")


if __name__ == "__main__":
    main()
