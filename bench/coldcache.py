"""Cold-cache switches (issue 19): an A→B switch with B's file cold, warm, and cold with the
switch's read-ahead, while A finishes a request; beside them, in the same run, the time to read
the file cold (`dd`), the systemd floor and llama-server's load modes.

    .venv/bin/python bench/coldcache.py [--quick] [--rounds N] [--out FILE.json]

A is a scripted backend whose answer takes `--busy` seconds (default 3); B is llama-server on a
generated model of ~1.6 GB (~400 MB with --quick), as a unit per variant (the same file). Each
case: A loaded, its request sent, then a 1-token request for B; the switch is timed from the end
of A's answer (as the client reads it) to B's first `/health` 200 (polled every 5 ms). The floor
does the same over D-Bus (StopUnit A, StartUnit B) with no daemon. "Cold" evicts B's file from the
page cache (posix_fadvise DONTNEED, checked with fincore; else drop_caches as root); the rest of
the cache (llama-server's binary) stays warm. Cases are interleaved over rounds, order rotated.

Needs what the end-to-end tests need (root, systemd, a llama-server: ../tests/harness.py).
Writes every figure to bench/results/coldcache-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

from benchkit import ensure_models, harness, log, machine_info, median, private_systemd, rnd  # noqa: E402

from llm_switch.scheduling.readahead import read_files  # noqa: E402  (the reader the switch uses)
from llm_switch.units.systemd import Systemd  # noqa: E402  (the floor's D-Bus client, as in run.py)

SIZES = {"large": {"hidden": 2048, "blocks": 8, "ffn": 5632}, "quick": {"hidden": 1024, "blocks": 8, "ffn": 2816}}
# llama-server's --load-mode values measured beside the default (auto: mmap)
LOAD_MODES = {"none": "no mmap (--no-mmap)", "mmap+mlock": "mmap + mlock (--mlock)", "dio": "direct I/O (--direct-io)"}
ANSWER = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}


# -- the page cache -----------------------------------------------------------------------------


def resident(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def make_cold(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if resident(path) > path.stat().st_size // 50:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    if resident(path) > path.stat().st_size // 50:
        raise SystemExit(f"{path} stays in the page cache ({resident(path)} bytes); is it mapped?")


def make_warm(path: Path) -> None:
    read_files(path.name, [str(path)], 0, threading.Event(), available=lambda: None)


def readers(path: Path) -> dict:
    """What each way of reading ahead leaves resident, from cold: dd, fadvise(WILLNEED), the reader."""
    size = path.stat().st_size
    make_cold(path)
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=8M"], check=True, capture_output=True)
    dd_s = time.monotonic() - t0
    make_cold(path)
    with open(path, "rb") as f:
        t0 = time.monotonic()
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        call_s = time.monotonic() - t0
        at_once = resident(path)
        time.sleep(1.0)
        after_1s = resident(path)
    make_cold(path)
    outcome = read_files(path.name, [str(path)], 0, threading.Event(), available=lambda: None)
    return {"size": size, "dd_s": dd_s, "bandwidth_Bps": size / dd_s, "limit_s": size / (size / dd_s),
            "willneed_call_s": call_s, "willneed_resident_at_once": at_once / size,
            "willneed_resident_after_1s": after_1s / size,
            "reader_s": outcome.seconds, "reader_resident": resident(path) / size}


# -- one switch ---------------------------------------------------------------------------------


def post(url: str, body: dict | None = None, timeout: float = 300.0) -> bytes:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def chat(url: str, model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def first_health(url: str, timeout: float = 300.0) -> float:
    """Monotonic time of the first /health 200, polling every 5 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = harness.http_get(url + "/health", timeout=2)
        if status == 200:
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"{url} not healthy in {timeout:.0f} s")


class Rig:
    """A, the B variants and a daemon in a private systemd --user."""

    def __init__(self, um: harness.UserManager, work: Path, model: Path, busy: float) -> None:
        self.dep = harness.Deployment(um, work, "cold")
        self.model, self.busy = model, busy
        self.a = self.dep.scripted_unit("a", {"routes": {"/v1/chat/completions": {"delay": busy, "json": ANSWER}}})
        self.b = {"b": self.dep.llama_unit("b", model), "b-ra": self.dep.llama_unit("b-ra", model, alias="b-ra")}
        for mode in LOAD_MODES:
            self.b[f"b-{mode}"] = self.dep.llama_unit(f"b-{mode}", model, extra_args=["--load-mode", mode],
                                                      unit=f"llama-server-cold@b-{mode.replace('+', '-')}.service")
        models = {"a": {"unit": self.a.unit, "url": self.a.url, "min_loaded": "100ms"}}
        for name, backend in self.b.items():
            models[name] = {"unit": backend.unit, "url": backend.url, "readahead": name == "b-ra"}
        self.daemon = self.dep.up(models)

    def switch(self, target: str, prepare) -> dict:
        """A loaded and busy; a request for `target` sent; from the end of A's answer to B's /health 200."""
        post(self.daemon.url + "/load/a")  # stops the B that ran before: its pages are no longer mapped
        prepare(self.model)
        seen = len(self.a.records("request"))
        done: dict[str, float] = {}
        thread = threading.Thread(target=lambda: (post(self.daemon.url + "/v1/chat/completions", chat("", "a")),
                                                  done.setdefault("a_end", time.monotonic())))
        thread.start()
        harness.wait_for(lambda: len(self.a.records("request")) > seen, 30, 0.005, "A's request")
        time.sleep(0.15)  # past A's min_loaded (100 ms): the switch goes at once and waits for the drain
        b = threading.Thread(target=lambda: post(self.daemon.url + "/v1/chat/completions", chat("", target)))
        b.start()
        ready = first_health(self.b[target].url)
        thread.join()
        b.join()
        return {"switch_s": ready - done["a_end"]}

    def floor(self, target: str, prepare) -> dict:
        """The same over D-Bus (StopUnit, StartUnit) with no daemon: from stopping A to B's /health 200."""
        post(self.daemon.url + "/unload")
        self.dep.um.systemctl("start", self.a.unit)
        first_health(self.a.url)
        prepare(self.model)
        return {"switch_s": asyncio.run(self._floor(self.b[target]))}

    async def _floor(self, b: harness.Backend) -> float:
        systemd = Systemd()
        await systemd.connect()
        try:
            t0 = time.monotonic()
            await systemd.stop(self.a.unit)
            await systemd.start(b.unit)
            ready = first_health(b.url)  # nothing else runs on this loop
            await systemd.stop(b.unit)
            return ready - t0
        finally:
            await systemd.close()

    def close(self) -> None:
        self.dep.close()


def cases(modes: list[str]) -> list[tuple[str, str, str]]:
    """(kind, model, cache) of every case."""
    out = [("switch", "b", "cold"), ("switch", "b", "warm"), ("switch", "b-ra", "cold"),
           ("floor", "b", "cold"), ("floor", "b", "warm")]
    for mode in modes:
        out += [("switch", f"b-{mode}", "cold"), ("switch", f"b-{mode}", "warm")]
    return out


def run_case(rig: Rig, kind: str, model: str, cache: str) -> dict:
    prepare = make_cold if cache == "cold" else make_warm
    row = rig.switch(model, prepare) if kind == "switch" else rig.floor(model, prepare)
    if kind == "switch" and model == "b-ra":
        row["readahead_line"] = next((line for line in reversed(rig.daemon.log().splitlines())
                                      if "b-ra: read ahead" in line or "b-ra: not read ahead" in line), None)
    return row


# -- the run --------------------------------------------------------------------------------------


def disk_of(path: Path) -> str:
    try:
        dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(path)],
                             capture_output=True, text=True, timeout=10).stdout.split()
        name = Path(dev[0]).name
        rota = Path(f"/sys/block/{name}/queue/rotational").read_text().strip()
        return f"{dev[0]} ({dev[1]}, rotational={rota})"
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def summarize(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        key = f"{r['kind']} {r['model']} {r['cache']}"
        out.setdefault(key, {"samples": []})["samples"].append(r["switch_s"])
    for v in out.values():
        v["median_s"] = rnd(median(v["samples"]))
        v["min_s"], v["max_s"] = rnd(min(v["samples"])), rnd(max(v["samples"]))
    return out


def paired(rows: list[dict], case: str, reference: str) -> float | None:
    """The median over rounds of case / reference: each round's pair saw the same load."""
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[f"{r['kind']} {r['model']} {r['cache']}"] = r["switch_s"]
    return median([v[case] / v[reference] for v in by_round.values() if case in v and reference in v])


def table(res: dict) -> str:
    r, s = res["readers"], res["summary"]
    med = {k: v["median_s"] for k, v in s.items()}
    warm = med["switch b warm"]
    lines = [f"B: {r['size'] / 1e9:.2f} GB; A busy {res['busy_s']:.1f} s; medians of {res['rounds']} rounds, "
             "seconds from the end of A's answer to B's first /health 200",
             "", "| what | cold | warm | cold / warm |", "|---|---|---|---|",
             f"| read the file (`dd`, {r['bandwidth_Bps'] / 1e6:.0f} MB/s): the limit | {r['dd_s']:.2f} | | |",
             f"| floor: StopUnit A, StartUnit B over D-Bus, 5 ms poll | {med['floor b cold']:.2f} | {med['floor b warm']:.2f} |"
             f" {med['floor b cold'] / med['floor b warm']:.2f} |",
             f"| switch | {med['switch b cold']:.2f} | {warm:.2f} | {med['switch b cold'] / warm:.2f} |",
             f"| switch, read ahead while A finishes | {med['switch b-ra cold']:.2f} | | "
             f"{med['switch b-ra cold'] / warm:.2f} (target ≤ 1.15); paired by round: {res['paired_ra']:.2f} |"]
    for mode, what in LOAD_MODES.items():
        if f"switch b-{mode} cold" not in med:
            continue
        c, w = med[f"switch b-{mode} cold"], med[f"switch b-{mode} warm"]
        lines.append(f"| switch, `--load-mode {mode}`: {what} | {c:.2f} | {w:.2f} | {c / warm:.2f} / {w / warm:.2f} |")
    lines += ["", f"readers from cold: `dd` {r['dd_s']:.2f} s; the switch's reader {r['reader_s']:.2f} s "
              f"({r['reader_resident']:.0%} resident); posix_fadvise(WILLNEED) returns in "
              f"{r['willneed_call_s'] * 1e3:.1f} ms with {r['willneed_resident_at_once']:.1%} resident, "
              f"{r['willneed_resident_after_1s']:.1%} after 1 s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~400 MB model, 1 round: a smoke check")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=float, default=3.0, help="seconds A's answer takes (2-5)")
    ap.add_argument("--load-modes", type=lambda v: [m for m in v.split(",") if m], default=list(LOAD_MODES),
                    help=f"llama-server load modes measured beside the default (of {','.join(LOAD_MODES)}; '' none)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    size = "quick" if args.quick else "large"
    model = ensure_models(f"coldcache-{size}", {"b": {"seed": "coldcache-b", **SIZES[size]}})["b"]
    server, env = harness.find_llama_server()
    info = machine_info(server, env) | {"disk": disk_of(model)}
    with contextlib.ExitStack() as stack:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"llm-switch-coldcache-{os.getpid()}"
        um = private_systemd(stack, work, args.keep)
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = um.env["DBUS_SESSION_BUS_ADDRESS"]  # the floor's D-Bus client
        rig = Rig(um, work, model, args.busy)
        stack.callback(rig.close)
        res = {"machine": info, "rounds": rounds, "busy_s": args.busy, "readers": readers(model), "rows": []}
        order = cases(args.load_modes)
        for n in range(rounds):
            for kind, name, cache in order[n % len(order):] + order[:n % len(order)]:
                row = {"round": n, "kind": kind, "model": name, "cache": cache, **run_case(rig, kind, name, cache)}
                log(f"{kind} {name} {cache}: {row['switch_s']:.3f} s", "coldcache")
                res["rows"].append(row)
        res["summary"] = summarize(res["rows"])
        res["paired_ra"] = paired(res["rows"], "switch b-ra cold", "switch b warm")
        res["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or BENCH / "results" / f"coldcache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nmachine: {info.get('Model name')}, {info['cpus']} CPUs, disk {info['disk']}, git {info.get('git')}, "
          f"load average {info['loadavg_start'][0]:.1f} → {res['machine']['loadavg_end'][0]:.1f}; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
