"""Paired relay timing for bench/run.py: one request to each route in turn, round after round.

    python bench/relay_paired.py SPEC_JSON     # prints one JSON object

SPEC: {"routes": {NAME: {"url": URL, "connection": "keep-alive" | "new"}}, "body": {...},
       "rounds": N, "warmup": N, "reference": NAME}

Blocks of one route at a time (bench/run.py's relay cells) drift with the load of a shared
machine by more than the ~1 ms being looked for; here every round sends one request per route,
the order rotated, so the difference to the reference route is taken within a round, a few
tens of milliseconds apart, and the median of those differences is reported. One synchronous
httpx client per route (as the OpenAI SDK sends), in its own process.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import httpx


def main(spec: dict) -> dict:
    payload = json.dumps(spec["body"]).encode()
    headers = {"Content-Type": "application/json"}
    names = list(spec["routes"])
    clients = {n: httpx.Client(timeout=60, limits=httpx.Limits(
        max_keepalive_connections=0 if r.get("connection") == "new" else 1)) for n, r in spec["routes"].items()}
    samples: dict[str, list[float]] = {n: [] for n in names}
    errors: list[str] = []
    for i in range(int(spec.get("warmup", 0)) + int(spec["rounds"])):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            t0 = time.perf_counter()
            r = clients[n].post(spec["routes"][n]["url"], content=payload, headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                errors.append(f"{n}: HTTP {r.status_code}: {r.content[:200]!r}")
            if i >= int(spec.get("warmup", 0)):
                samples[n].append(dt)
    for c in clients.values():
        c.close()
    ref = samples[spec["reference"]]
    out = {"rounds": len(ref), "errors": errors[:5], "error_count": len(errors), "routes": {}}
    for n in names:
        s = samples[n]
        out["routes"][n] = {"p50_ms": round(statistics.median(s), 3),
                            "added_ms_paired": round(statistics.median(a - b for a, b in zip(s, ref)), 3)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
