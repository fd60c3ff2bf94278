"""Load generator for bench/run.py: runs in its own process, so it never shares a CPU-bound event
loop with the daemon or the backend it measures.

    python bench/loadgen.py SPEC_JSON        # prints one JSON object with the results

SPEC (JSON object):
    mode         "requests" (non-streaming, closed loop) | "streams" (one SSE stream per client)
    url          full URL to POST to
    body         JSON body to send (a dict)
    concurrency  clients at once
    count        requests in all ("requests" mode; "streams" mode: one stream per client)
    warmup       requests before the timed part ("requests" mode; default 0)
    connection   "keep-alive" (default: each client reuses its connection) | "new" (a new
                 connection for every request, closed after the answer; "requests" mode)
    client       "aiohttp" (default) | "httpx": httpx's synchronous Client, the one the OpenAI
                 and Anthropic SDKs use ("requests" mode, concurrency 1)
    start_at     optional unix time: sleep until then before the timed part (several
                 processes start one burst together)
    timeout      seconds for the whole run (default 300); requests still open then are errors
    raw          also return every sample (latencies_ms, or ttfc_ms for streams)

Results: latencies in milliseconds, throughput in requests (or events) per second, errors with
a few examples. Only loopback URLs are expected; nothing here retries.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import aiohttp


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary_ms(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


class Errors:
    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(what[:300])


async def _sleep_until(start_at: float | None) -> None:
    if start_at:
        delay = start_at - time.time()
        if 0 < delay < 60:
            await asyncio.sleep(delay)


def _requests_result(conc: int, wall: float, latencies: list[float], errors: Errors, raw: bool) -> dict:
    out = {"mode": "requests", "concurrency": conc, "wall_s": wall,
           "throughput_rps": len(latencies) / wall if wall else None,
           "errors": errors.count, "error_examples": errors.examples, **summary_ms(latencies)}
    if raw:
        out["latencies_ms"] = [round(v * 1000, 4) for v in latencies]
    return out


def run_requests_httpx(spec: dict) -> dict:
    """One client in a loop with httpx's synchronous Client, as the OpenAI SDK sends requests."""
    import httpx

    if int(spec["concurrency"]) != 1:
        raise ValueError("client httpx: concurrency 1 only")
    url, payload = spec["url"], json.dumps(spec["body"]).encode()
    count, warmup = int(spec["count"]), int(spec.get("warmup", 0))
    headers = {"Content-Type": "application/json"}
    errors = Errors()
    latencies: list[float] = []
    keepalive = 0 if spec.get("connection") == "new" else 1  # 0: the pool closes each connection after use
    deadline = time.monotonic() + float(spec.get("timeout", 300))
    with httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=keepalive)) as http:

        def one(record: bool) -> None:
            t0 = time.perf_counter()
            try:
                r = http.post(url, content=payload, headers=headers)
            except httpx.HTTPError as e:
                errors.add(f"{type(e).__name__}: {e}")
                return
            if r.status_code != 200:
                errors.add(f"HTTP {r.status_code}: {r.content[:200]!r}")
                return
            if record:
                latencies.append(time.perf_counter() - t0)

        for _ in range(warmup):
            one(False)
        start_at = spec.get("start_at")
        if start_at and 0 < start_at - time.time() < 60:
            time.sleep(start_at - time.time())
        t0 = time.perf_counter()
        for _ in range(count):
            if time.monotonic() > deadline:
                errors.add("timeout: the run took longer than its timeout")
                break
            one(True)
        wall = time.perf_counter() - t0
    return _requests_result(1, wall, latencies, errors, bool(spec.get("raw")))


async def run_requests(spec: dict) -> dict:
    url, payload = spec["url"], json.dumps(spec["body"]).encode()
    conc, count, warmup = int(spec["concurrency"]), int(spec["count"]), int(spec.get("warmup", 0))
    headers = {"Content-Type": "application/json"}
    errors = Errors()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=conc, force_close=spec.get("connection") == "new")
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(record: bool) -> None:
            t0 = time.perf_counter()
            try:
                async with http.post(url, data=payload, headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        errors.add(f"HTTP {r.status}: {body[:200]!r}")
                        return
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                errors.add(f"{type(e).__name__}: {e}")
                return
            if record:
                latencies.append(time.perf_counter() - t0)

        async def worker(queue: list[int], record: bool) -> None:
            while queue:
                queue.pop()
                await one(record)

        # warm-up: open the connections and let both sides settle
        todo = list(range(warmup))
        await asyncio.gather(*(worker(todo, False) for _ in range(conc)))
        await _sleep_until(spec.get("start_at"))
        todo = list(range(count))
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(todo, True) for _ in range(conc))),
                               float(spec.get("timeout", 300)))
        wall = time.perf_counter() - t0
    return _requests_result(conc, wall, latencies, errors, bool(spec.get("raw")))


async def run_streams(spec: dict) -> dict:
    url, payload = spec["url"], json.dumps(spec["body"]).encode()
    conc = int(spec["concurrency"])
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    errors = Errors()
    ttfc: list[float] = []
    rates: list[float] = []  # events per second per stream, first event to last
    totals: list[int] = []
    durations: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 300)), sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> None:
            t0 = time.perf_counter()
            first = None
            events = 0
            tail = b""
            done = False
            try:
                async with http.post(url, data=payload, headers=headers) as r:
                    if r.status != 200:
                        errors.add(f"HTTP {r.status}: {(await r.read())[:200]!r}")
                        return
                    async for chunk in r.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                        data = tail + chunk
                        events += data.count(b"\n\n") - tail.count(b"\n\n")
                        tail = data[-16:]
                    done = b"data: [DONE]" in tail
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                errors.add(f"{type(e).__name__}: {e}")
                return
            end = time.perf_counter()
            if not done:
                errors.add(f"stream ended without [DONE] after {events} events")
                return
            ttfc.append(first - t0)
            durations.append(end - t0)
            totals.append(events)
            if end > first:
                rates.append(events / (end - first))

        await _sleep_until(spec.get("start_at"))
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conc)))
        wall = time.perf_counter() - t0
    ttfc_summary = {f"ttfc_{k}": v for k, v in summary_ms(ttfc).items() if k != "n"}
    raw = {"ttfc_ms": [round(v * 1000, 4) for v in ttfc]} if spec.get("raw") else {}
    return {**raw, "mode": "streams", "concurrency": conc, "wall_s": wall, "streams_ok": len(ttfc),
            "events": sum(totals), "events_per_s_per_stream": statistics.fmean(rates) if rates else None,
            "events_per_s_total": sum(totals) / wall if wall else None,
            "stream_s_p50": pct(durations, 50), "errors": errors.count, "error_examples": errors.examples,
            **ttfc_summary}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1] if len(argv) > 1 else sys.stdin.read())
    if spec["mode"] == "requests" and spec.get("client") == "httpx":
        result = run_requests_httpx(spec)
    else:
        run = {"requests": run_requests, "streams": run_streams}[spec["mode"]]
        result = asyncio.run(run(spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
