"""Benchmark of llm-switch against the floor and against llama.cpp's router mode, in one run.

    .venv/bin/python bench/run.py [--quick] [--out bench/results/NAME.json] [--sizes tiny,large]

Needs what the end-to-end tests need (root for a private ``systemd --user`` in a mount namespace,
a llama-server: see ../tests/support/harness.py). It starts its own user manager, real llama-server
units, scripted backends and the daemon, all on free loopback ports, and measures:

1. switch latency: a 1-token chat request that needs the other model (A↔B alternation), through
   the switch, against (a) the floor: StopUnit + StartUnit over D-Bus, /health polled every
   5 ms, the same request straight to the backend; (b) llama.cpp's router mode
   (``llama-server --models-dir DIR --models-max 1``) on the same files;
2. relay overhead, non-streaming: latency and throughput, switch vs direct, at concurrency 1
   and 32 on a scripted backend (the relay is what is measured) and at 1 and 4 on llama-server
   (max_tokens 1; a real backend's numbers; it has 4 HTTP threads); with --relay-backends, on
   llama-server with the ~410 MB model at -t 1 and -t 2 too, and paired (bench/relay_paired.py)
   against a new connection per request and a plain TCP forwarder (bench/tcp_forward.py);
3. relay overhead, streaming: one SSE stream of many small chunks, as fast as the scripted
   backend can write them; chunks/s and time to first chunk, switch vs direct;
4. many clients: hundreds of concurrent paced streams through the switch: errors, time to first
   chunk, the daemon's CPU time and peak RSS.

Models are generated once into bench/.cache (or $LLM_SWITCH_BENCH_CACHE). Clients run in
separate processes (bench/loadgen.py), except the switch-latency client, which is idle while it
waits. Prints a table; writes every figure (and raw samples) to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

from support import harness  # noqa: E402
from llm_switch.units.systemd import Systemd  # noqa: E402
import benchkit  # noqa: E402
from benchkit import log, machine_info, median, pct, private_systemd, ratio, rnd  # noqa: E402
from profiling import Profiler  # noqa: E402
from report import table, targets  # noqa: E402

LOADGEN = BENCH / "loadgen.py"
PAIRED = BENCH / "relay_paired.py"
FORWARD = BENCH / "tcp_forward.py"
SIZES = {
    # name: make_model keyword arguments
    "tiny": {},
    "large": {"hidden": 1024, "blocks": 8, "ffn": 2816},
}
PHASES = ("switch", "relay", "stream", "clients")
# llama-server backends the relay phase can measure besides the default (the first size's model
# at harness.llama_args' -t 1): name -> (size, threads). With -t 2 its compute holds both CPUs
# of a 2-CPU machine; with -t 1 one is left to its HTTP threads, the relay and the client.
RELAY_LLAMA = {"tiny-t1": ("tiny", 1), "400m-t1": ("large", 1), "400m-t2": ("large", 2)}
HEALTH_POLL_S = 0.005
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
PROMPT = {"prompt": "hi", "max_tokens": 1}
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
CHUNK = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                    "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}]},
                   separators=(",", ":"))
COMPLETION = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "fast",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

TEXT_COMPLETION = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": "fast",
                   "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@dataclass(frozen=True)
class RelayCell:
    """One measurement of the relay: which backend, API, client and connection handling."""

    backend: str      # "scripted" | "llama_server"
    path: str         # "chat" | "completions"
    client: str       # "httpx" (synchronous, as the OpenAI SDK) | "aiohttp"
    connection: str   # "keep-alive" | "new" (a new connection per request)
    concurrency: int
    count: int        # timed requests per block

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.path}/{self.client}/{self.connection}/c{self.concurrency}"


@dataclass
class Plan:
    sizes: tuple[str, ...]
    passes: int              # switch latency: blocks of each method, order rotated per pass
    rounds: dict[str, int]   # switch latency: timed switches per block, by size
    relay_c1: dict[str, int]                # one client: requests per block, by backend
    relay_busy: dict[str, tuple[int, int]]  # many clients: (concurrency, requests per block), by backend
    relay_reps: int                         # passes over every relay cell
    relay_real: tuple[int, tuple[int, int]]  # ~410 MB model: relay_c1 and relay_busy (~30 ms a request)
    relay_pair_rounds: int                   # --relay-backends: rounds of the paired comparison
    stream_events: int
    stream_reps: int
    clients: int
    client_procs: int
    paced_events: int
    paced_interval: float

    @classmethod
    def full(cls) -> Plan:
        return cls(sizes=("tiny", "large"), passes=6, rounds={"tiny": 8, "large": 5},
                   relay_c1={"scripted": 600, "llama_server": 200},
                   relay_busy={"scripted": (32, 6000), "llama_server": (4, 600)}, relay_reps=3,
                   relay_real=(60, (4, 60)), relay_pair_rounds=200,
                   stream_events=100000, stream_reps=3, clients=300, client_procs=2,
                   paced_events=40, paced_interval=0.05)

    @classmethod
    def quick(cls) -> Plan:
        return cls(sizes=("tiny",), passes=1, rounds={"tiny": 4, "large": 2},
                   relay_c1={"scripted": 60, "llama_server": 20},
                   relay_busy={"scripted": (32, 400), "llama_server": (4, 40)}, relay_reps=1,
                   relay_real=(10, (4, 10)), relay_pair_rounds=20,
                   stream_events=5000, stream_reps=1, clients=40, client_procs=1,
                   paced_events=10, paced_interval=0.02)


# -- small helpers ------------------------------------------------------------------------------

class BenchError(RuntimeError):
    pass


def ensure_models(size: str) -> dict[str, Path]:
    """Two models of `size` (seeds 1 and 2) in their own directory (router mode reads the whole
    directory and names each model by its file stem)."""
    paths = benchkit.ensure_models(size, {f"{size}-{n}": {"seed": seed, **SIZES[size]} for n, seed in (("a", 1), ("b", 2))})
    return {n: paths[f"{size}-{n}"] for n in ("a", "b")}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux ≥ 4.0: writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- the bench ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, plan: Plan, um: harness.UserManager, work: Path, server: str, server_env: dict[str, str],
                 models: dict[str, dict[str, Path]]) -> None:
        self.plan, self.um, self.work = plan, um, work
        self.server, self.server_env = server, server_env
        self.models = models  # size -> {"a": path, "b": path}
        self.llama_port = harness.free_port()
        self.llama_url = f"http://127.0.0.1:{self.llama_port}"
        self.router_ports = {size: harness.free_port() for size in models}
        self.scripted: dict[str, dict] = {}
        self.daemon: harness.Daemon | None = None
        self.variants: dict[str, harness.Daemon] = {}  # --variant NAME=EXE: other daemons, same work
        self.sd = Systemd()
        self.http: aiohttp.ClientSession | None = None
        self.errors: list[str] = []
        self.prof = Profiler(None, None)
        self.relay_scripted = True  # --relay-backends: the scripted backend's cells
        self.relay_llama: dict[str, tuple[Path, int]] = {}  # --relay-backends: name -> (model file, threads)
        self.relay_paired_only = False  # --relay-paired-only: llama-server backends without the block cells

    # names and units
    @staticmethod
    def unit(model: str) -> str:
        return f"bench-{model}.service"

    def llama_models(self) -> list[str]:
        return [f"{size}-{ab}" for size in self.models for ab in ("a", "b")]

    def write_units(self) -> Path:
        logs = self.work / "logs"
        logs.mkdir()
        llama_args = ("-t", "1", "-np", "2", "-c", "1024")  # harness.llama_args uses the same
        for size, paths in self.models.items():
            for ab, path in paths.items():
                name = f"{size}-{ab}"
                self.um.write_unit(self.unit(name), harness.llama_unit_text(
                    self.server, self.server_env, path, self.llama_port, alias=name, log_path=logs / f"{name}.log"))
            argv = [self.server, "--models-dir", str(paths["a"].parent), "--models-max", "1",
                    "--host", "127.0.0.1", "--port", str(self.router_ports[size]), "--no-webui", "--no-warmup",
                    *llama_args]
            self.um.write_unit(self.unit(f"router-{size}"), harness.unit_text(
                argv, env=self.server_env, description=f"llama.cpp router {size} (bench)",
                log_path=logs / f"router-{size}.log"))
        p = self.plan
        scripts = {
            "fast": {"model": "fast", "routes": {"/v1/chat/completions": {"json": COMPLETION},
                                                "/v1/completions": {"json": TEXT_COMPLETION}}},
            "stream": {"model": "stream", "routes": {"/v1/chat/completions": {
                "sse": {"repeat": CHUNK, "count": p.stream_events}}}},
            "paced": {"model": "paced", "routes": {"/v1/chat/completions": {
                "sse": {"repeat": CHUNK, "count": p.paced_events}, "interval": p.paced_interval}}},
        }
        for name, (path, threads) in self.relay_llama.items():
            self.um.write_unit(self.unit(f"relay-{name}"), harness.llama_unit_text(
                self.server, self.server_env, path, self.llama_port, alias=f"relay-{name}",
                extra_args=("-t", str(threads)), log_path=logs / f"relay-{name}.log"))  # the last -t counts
        for name, script in scripts.items():
            port = harness.free_port()
            script_path = self.work / f"{name}.json"
            script_path.write_text(json.dumps(script))
            self.um.write_unit(self.unit(name), harness.scripted_unit_text(script_path, port,
                                                                           log_path=logs / f"{name}.log"))
            self.scripted[name] = {"url": f"http://127.0.0.1:{port}", "port": port}
        self.um.daemon_reload()
        config = {
            "listen": f"127.0.0.1:{harness.free_port()}",
            "backend": self.llama_url,
            "health_timeout": 120,
            "max_connections": 1024,  # the many-clients phase holds 300 streams open at once (default 256)
            "models": {
                **{m: self.unit(m) for m in self.llama_models()},
                **{f"relay-{n}": self.unit(f"relay-{n}") for n in self.relay_llama},
                **{name: {"unit": self.unit(name), "url": s["url"]} for name, s in self.scripted.items()},
            },
        }
        path = self.work / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    # -- HTTP

    async def chat(self, base: str, model: str) -> tuple[int, dict | str]:
        async with self.http.post(f"{base}/v1/chat/completions", json={"model": model, **CHAT},
                                  timeout=aiohttp.ClientTimeout(total=300)) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    def check_answer(self, what: str, model: str, status: int, body) -> bool:
        """A 200 from the model asked for (llama-server names its alias; the router its file stem)."""
        got = body.get("model") if isinstance(body, dict) else None
        if status == 200 and got == model:
            return True
        self.errors.append(f"{what}: asked for {model}, got HTTP {status} from {got!r}: {str(body)[:300]}")
        log(self.errors[-1])
        return False

    async def wait_health(self, base: str, timeout: float = 120.0, interval: float = HEALTH_POLL_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.http.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    await r.read()
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(interval)
        raise BenchError(f"{base}/health not 200 within {timeout:.0f} s")

    def base(self, target: str) -> str:
        """URL of a target that is a daemon: "switch" (the one under test) or "variant:NAME"."""
        return self.daemon.url if target == "switch" else self.variants[target.split(":", 1)[1]].url

    def daemon_pid(self, target: str) -> int | None:
        if target == "direct":
            return None
        return (self.daemon if target == "switch" else self.variants[target.split(":", 1)[1]]).proc.pid

    def daemon_targets(self) -> list[str]:
        return ["switch", *(f"variant:{name}" for name in self.variants)]

    async def daemon_post(self, path: str, target: str = "switch") -> dict:
        async with self.http.post(self.base(target) + path, timeout=aiohttp.ClientTimeout(total=120)) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise BenchError(f"POST {path} -> {r.status}: {body}")
            return body

    async def daemon_get(self, path: str, target: str = "switch") -> dict:
        async with self.http.get(self.base(target) + path, timeout=aiohttp.ClientTimeout(total=30)) as r:
            return await r.json(content_type=None)

    async def load_via_daemon(self, model: str, target: str = "switch") -> None:
        status, body = await self.chat(self.base(target), model)
        if status != 200:
            raise BenchError(f"could not load {model} through the switch: HTTP {status}: {str(body)[:500]}")

    async def stop_everything(self) -> None:
        """No model of any method left running: the daemon's, the floor's, the routers."""
        for target in self.daemon_targets():
            await self.daemon_post("/unload", target)
        await asyncio.gather(*(self.sd.stop(self.unit(m)) for m in self.llama_models()),
                             *(self.sd.stop(self.unit(f"router-{s}")) for s in self.models))

    def profiling(self, on: bool, name: str):
        return self.prof.record(name, self.daemon.proc.pid) if on else contextlib.nullcontext()

    async def loadgen(self, spec: dict, timeout: float = 600, script: Path = LOADGEN) -> dict:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), json.dumps(spec),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BenchError(f"load generator ran past {timeout:.0f} s: {spec['url']}") from None
        if proc.returncode != 0:
            raise BenchError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
        return json.loads(out)

    # -- 1. switch latency

    async def floor_switch(self, prev: str | None, nxt: str) -> tuple[float, dict]:
        t0 = time.perf_counter()
        if prev:
            await self.sd.stop(self.unit(prev))
        t1 = time.perf_counter()
        await self.sd.start(self.unit(nxt))
        t2 = time.perf_counter()
        await self.wait_health(self.llama_url)
        t3 = time.perf_counter()
        status, body = await self.chat(self.llama_url, nxt)
        t4 = time.perf_counter()
        self.check_answer("floor", nxt, status, body)
        return t4 - t0, {"stop_s": t1 - t0, "start_job_s": t2 - t1, "health_s": t3 - t2, "request_s": t4 - t3}

    async def block(self, method: str, size: str, rounds: int) -> tuple[list[float], list[dict]]:
        a, b = f"{size}-a", f"{size}-b"
        times: list[float] = []
        parts: list[dict] = []
        await self.stop_everything()
        if method == "floor":
            await self.floor_switch(None, a)  # cold start, untimed
            cur = a
            for _ in range(rounds):
                nxt = b if cur == a else a
                t, p = await self.floor_switch(cur, nxt)
                times.append(t)
                parts.append(p)
                cur = nxt
        else:
            if method == "router":
                base = f"http://127.0.0.1:{self.router_ports[size]}"
                await self.sd.start(self.unit(f"router-{size}"))
                await self.wait_health(base, interval=0.02)
                async with self.http.get(f"{base}/models", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    ids = {m.get("id") for m in (await r.json(content_type=None)).get("data", [])}
                if not {a, b} <= ids:  # this build names router models after their file stem
                    raise BenchError(f"router mode lists models {sorted(map(str, ids))}, expected {a} and {b}")
            else:
                base = self.base(method)
            status, body = await self.chat(base, a)  # cold start, untimed
            self.check_answer(method, a, status, body)
            cur = a
            for _ in range(rounds):
                nxt = b if cur == a else a
                t0 = time.perf_counter()
                status, body = await self.chat(base, nxt)
                times.append(time.perf_counter() - t0)
                self.check_answer(method, nxt, status, body)
                cur = nxt
            if method != "router":
                records = (await self.daemon_get("/status", method))["switches"][-rounds:]
                parts = [{"stopped_s": r["stopped_s"], "ready_s": r["ready_s"], "ok": r["ok"]} for r in records]
        await self.stop_everything()
        return times, parts

    async def switch_latency(self, size: str) -> dict:
        """Blocks of each method, the order rotated per pass so that drift on a shared machine hits
        all three alike; ratios both of the overall medians and per pass (paired)."""
        methods = ["floor", *self.daemon_targets(), "router"]
        times: dict[str, list[float]] = {m: [] for m in methods}
        parts: dict[str, list[dict]] = {m: [] for m in methods}
        per_pass: list[dict[str, float]] = []
        rounds = self.plan.rounds[size]
        for p in range(self.plan.passes):
            order = methods[p % len(methods):] + methods[:p % len(methods)]
            medians = {}
            for method in order:
                t, pt = await self.block(method, size, rounds)
                times[method] += t
                parts[method] += pt
                medians[method] = median(t)
            per_pass.append(medians)
            log(f"switch latency {size}, pass {p + 1}/{self.plan.passes}: "
                + ", ".join(f"{m} {medians[m] * 1000:.1f} ms" for m in methods))
        out: dict = {"rounds": len(times["switch"]), "passes": self.plan.passes}
        for m in methods:
            out[m] = {"median_s": rnd(median(times[m])), "p90_s": rnd(pct(times[m], 90)),
                      "min_s": rnd(min(times[m])), "samples_s": [rnd(t) for t in times[m]]}
            if parts[m]:
                keys = [k for k in parts[m][0] if k != "ok"]
                out[m]["breakdown_median_s"] = {k: rnd(median([p[k] for p in parts[m]])) for k in keys}
        out["per_pass_median_s"] = [{m: rnd(v) for m, v in pp.items()} for pp in per_pass]
        pairs = [("switch", "router"), ("switch", "floor"), ("router", "floor")]
        pairs += [(v, ref) for v in self.daemon_targets()[1:] for ref in ("switch", "router", "floor")]
        for a, b in pairs:
            out[f"{a}_vs_{b}"] = rnd(ratio(out[a]["median_s"], out[b]["median_s"]), 3)
            out[f"{a}_vs_{b}_paired"] = rnd(median([pp[a] / pp[b] for pp in per_pass]), 3)
        return out

    # -- 2. relay, non-streaming

    def relay_cells(self, backend: str) -> list[RelayCell]:
        """Per backend: one client (httpx, as the OpenAI SDK; keep-alive and a new connection per
        request; chat and completions), one aiohttp keep-alive client (the figure of earlier runs),
        and several aiohttp clients at once (throughput)."""
        kind, _, name = backend.partition(":")
        if name and RELAY_LLAMA[name][0] == "large":
            n1, (conc, n) = self.plan.relay_real
        else:
            n1, (conc, n) = self.plan.relay_c1[kind], self.plan.relay_busy[kind]
        cells = [RelayCell(backend, path, "httpx", conn, 1, n1)
                 for conn in ("keep-alive", "new") for path in ("chat", "completions")]
        return cells + [RelayCell(backend, "chat", "aiohttp", "keep-alive", 1, n1),
                        RelayCell(backend, "chat", "aiohttp", "keep-alive", conc, n)]

    async def relay_backend(self, backend: str, direct_base: str, model: str) -> list[dict]:
        """Every cell of `backend`, for each target in turn (the order rotated per cell and pass),
        over several passes: the targets of a cell run back to back, under the same noise."""
        targets = ["direct", *self.daemon_targets()]
        for target in targets[1:]:
            await self.load_via_daemon(model, target)  # exclusive: the others' model stops
        if len(targets) > 2:
            await self.load_via_daemon(model)  # one unit serves all daemons: keep it running
        cells = self.relay_cells(backend)
        lat = {c: {t: [] for t in targets} for c in cells}
        passes = {c: [] for c in cells}  # per pass: {target: p50}
        wall = {c: {t: 0.0 for t in targets} for c in cells}
        cpu = {c: {t: 0.0 for t in targets} for c in cells}  # the daemon's CPU while it relayed, warm-up included
        sent = {c: {t: 0 for t in targets} for c in cells}
        k = 0
        for rep in range(self.plan.relay_reps):
            for cell in cells:
                order = targets[k % len(targets):] + targets[:k % len(targets)]
                k += 1
                medians = {}
                for target in order:
                    base = direct_base if target == "direct" else self.base(target)
                    pid = self.daemon_pid(target)
                    cpu0 = proc_cpu_s(pid) if pid else 0.0
                    warmup = max(cell.concurrency * 2, 20, cell.count // 10)
                    body = {"model": model, **(CHAT if cell.path == "chat" else PROMPT)}
                    async with self.profiling(target == "switch" and rep == 0, f"relay-{cell.key}"):
                        r = await self.loadgen({"mode": "requests", "url": f"{base}{PATHS[cell.path]}", "body": body,
                                                "concurrency": cell.concurrency, "count": cell.count,
                                                "warmup": warmup, "client": cell.client,
                                                "connection": cell.connection, "raw": True})
                    if pid:
                        cpu[cell][target] += proc_cpu_s(pid) - cpu0
                    sent[cell][target] += cell.count + warmup
                    lat[cell][target] += r["latencies_ms"]
                    wall[cell][target] += r["wall_s"]
                    medians[target] = r["p50_ms"]
                    if r["errors"]:
                        self.errors.append(f"relay {cell.key} {target}: {r['error_examples']}")
                passes[cell].append(medians)
        out = []
        for cell in cells:
            row: dict = asdict(cell)
            for target in targets:
                v = lat[cell][target]
                row[target] = {"n": len(v), "p50_ms": rnd(pct(v, 50), 3), "p99_ms": rnd(pct(v, 99), 3),
                               "throughput_rps": rnd(len(v) / wall[cell][target], 1) if wall[cell][target] else None}
                if target != "direct":
                    c = cpu[cell][target]
                    row[target]["daemon_cpu_us_per_request"] = rnd(c * 1e6 / sent[cell][target], 1)
                    row[target]["added_p50_ms"] = rnd(row[target]["p50_ms"] - row["direct"]["p50_ms"], 3)
                    row[target]["added_p50_ms_paired"] = rnd(median(
                        [pp[target] - pp["direct"] for pp in passes[cell] if pp[target] and pp["direct"]]), 3)
                    row[target]["added_p99_ms"] = rnd(row[target]["p99_ms"] - row["direct"]["p99_ms"], 3)
                    row[target]["throughput_ratio"] = rnd(ratio(row[target]["throughput_rps"],
                                                                row["direct"]["throughput_rps"]), 3)
            row["per_pass_p50_ms"] = [{t: rnd(v, 3) for t, v in pp.items()} for pp in passes[cell]]
            out.append(row)
            log(f"relay {cell.key}: p50 direct {row['direct']['p50_ms']} ms, switch {row['switch']['p50_ms']} ms "
                f"(+{row['switch']['added_p50_ms']}, paired +{row['switch']['added_p50_ms_paired']})"
                + "".join(f", {t} +{row[t]['added_p50_ms']} (paired +{row[t]['added_p50_ms_paired']})"
                          for t in targets[2:]))
        return out

    async def relay_paired(self, name: str) -> dict:
        """One request per route in turn (bench/relay_paired.py): straight to llama-server on a kept-alive
        connection (the reference) and on a new one per request, through the switch, and through a plain
        TCP forwarder that opens a new upstream connection per client connection."""
        model = f"relay-{name}"
        await self.load_via_daemon(model)
        port = harness.free_port()
        fwd = await asyncio.create_subprocess_exec(sys.executable, str(FORWARD), str(port), str(self.llama_port),
                                                   stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(fwd.stdout.readline(), 30)
            chat = PATHS["chat"]
            routes = {"direct": {"url": self.llama_url + chat},
                      "direct-new": {"url": self.llama_url + chat, "connection": "new"},
                      "switch": {"url": self.daemon.url + chat},
                      "switch-new": {"url": self.daemon.url + chat, "connection": "new"},
                      "tcp-forward-new": {"url": f"http://127.0.0.1:{port}{chat}", "connection": "new"}}
            passes = []
            cpu = {"switch": 0.0, "tcp-forward": 0.0}  # CPU while relaying, warm-up included
            pids = {"switch": self.daemon.proc.pid, "tcp-forward": fwd.pid}
            for _ in range(self.plan.relay_reps):
                cpu0 = {k: proc_cpu_s(pid) for k, pid in pids.items()}
                r = await self.loadgen({"routes": routes, "body": {"model": model, **CHAT}, "reference": "direct",
                                        "rounds": self.plan.relay_pair_rounds, "warmup": 10}, script=PAIRED)
                if r["error_count"]:
                    self.errors.append(f"relay paired {name}: {r['errors']}")
                log(f"relay paired {name}: " + ", ".join(f"{n} {v['p50_ms']} ms (+{v['added_ms_paired']})"
                                                          for n, v in r["routes"].items()))
                passes.append(r["routes"])
                cpu = {k: cpu[k] + proc_cpu_s(pid) - cpu0[k] for k, pid in pids.items()}
        finally:
            fwd.kill()
            await fwd.wait()
        routes_out = {n: {k: rnd(median([p[n][k] for p in passes]), 3) for k in ("p50_ms", "added_ms_paired")}
                      for n in routes}  # medians over passes
        sent = len(passes) * (self.plan.relay_pair_rounds + 10)  # requests per route; the switch has two routes
        cpu_us = {"switch": rnd(cpu["switch"] * 1e6 / (2 * sent), 1),
                  "tcp-forward": rnd(cpu["tcp-forward"] * 1e6 / sent, 1)}
        log(f"relay paired {name}: CPU per request: switch {cpu_us['switch']} µs, "
            f"tcp forwarder {cpu_us['tcp-forward']} µs")
        return {"rounds": self.plan.relay_pair_rounds, "passes": passes, "routes": routes_out,
                "cpu_us_per_request": cpu_us}

    async def relay(self) -> dict:
        await self.stop_everything()
        load0 = os.getloadavg()
        cells = []
        if self.relay_scripted:
            cells += await self.relay_backend("scripted", self.scripted["fast"]["url"], "fast")
        if self.relay_llama:
            llama_model = [f"relay-{name}" for name in self.relay_llama]
            paired = {}
            for name in self.relay_llama:  # each backend in turn: one llama-server port, one model at a time
                if not self.relay_paired_only:
                    cells += await self.relay_backend(f"llama_server:{name}", self.llama_url, f"relay-{name}")
                paired[name] = await self.relay_paired(name)
        else:
            llama_model = f"{self.plan.sizes[0]}-a"
            cells += await self.relay_backend("llama_server", self.llama_url, llama_model)
        out = {"passes": self.plan.relay_reps, "llama_model": llama_model, "loadavg_start": load0,
               "loadavg_end": os.getloadavg(), "cells": cells}
        if self.relay_llama:
            out["paired"] = paired
        return out

    # -- 3. relay, streaming

    async def streaming(self) -> dict:
        targets = ["direct", *self.daemon_targets()]
        for target in targets[1:]:
            await self.load_via_daemon("stream", target)
        body = {"model": "stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        runs: dict[str, list[dict]] = {t: [] for t in targets}
        for rep in range(self.plan.stream_reps):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for target in order:
                base = self.scripted["stream"]["url"] if target == "direct" else self.base(target)
                pid = self.daemon_pid(target)
                cpu0 = proc_cpu_s(pid) if pid else 0.0
                async with self.profiling(target == "switch" and rep == 0, "streaming"):
                    r = await self.loadgen({"mode": "streams", "url": f"{base}/v1/chat/completions", "body": body,
                                            "concurrency": 1, "raw": True})
                r["daemon_cpu_s"] = proc_cpu_s(pid) - cpu0 if pid else None
                if r["errors"]:
                    self.errors.append(f"streaming {target}: {r['error_examples']}")
                runs[target].append(r)
        out: dict = {"events_per_stream": self.plan.stream_events, "streams": self.plan.stream_reps}
        for target, rs in runs.items():
            rates = [r["events_per_s_per_stream"] for r in rs if r["events_per_s_per_stream"]]
            ttfc = [t for r in rs for t in r["ttfc_ms"]]
            out[target] = {"chunks_per_s": rnd(median(rates), 0), "ttfc_ms": rnd(median(ttfc), 3),
                           "events": [r["events"] for r in rs], "errors": sum(r["errors"] for r in rs)}
            if target != "direct":
                cpu = sum(r["daemon_cpu_s"] for r in rs)
                out[target]["daemon_cpu_us_per_chunk"] = rnd(cpu * 1e6 / max(1, sum(r["events"] for r in rs)), 2)
        out["rate_ratio"] = rnd(ratio(out["switch"]["chunks_per_s"], out["direct"]["chunks_per_s"]), 3)
        out["added_ttfc_ms"] = rnd(out["switch"]["ttfc_ms"] - out["direct"]["ttfc_ms"], 3)
        for target in targets[2:]:
            out[target]["rate_ratio"] = rnd(ratio(out[target]["chunks_per_s"], out["direct"]["chunks_per_s"]), 3)
        log(f"streaming: direct {out['direct']['chunks_per_s']}/s, switch {out['switch']['chunks_per_s']}/s")
        return out

    # -- 4. many clients

    async def burst(self, base: str) -> list[dict]:
        """All clients open a paced stream at the same moment, from `client_procs` processes."""
        p = self.plan
        body = {"model": "paced", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        per = [p.clients // p.client_procs + (1 if i < p.clients % p.client_procs else 0) for i in range(p.client_procs)]
        start_at = time.time() + 2.0  # every process is up, and they begin the burst together
        return await asyncio.gather(*(
            self.loadgen({"mode": "streams", "url": f"{base}/v1/chat/completions", "body": body,
                          "concurrency": n, "start_at": start_at, "timeout": 240, "raw": True}) for n in per))

    async def many_clients(self) -> dict:
        """The same burst straight to the backend (for reference), then through the switch."""
        await self.load_via_daemon("paced")
        p = self.plan
        direct = await self.burst(self.scripted["paced"]["url"])
        pid = self.daemon.proc.pid
        before_mem = proc_mem_kb(pid)
        reset_ok = reset_peak_rss(pid)
        cpu0 = proc_cpu_s(pid)
        async with self.profiling(True, "many-clients"):
            results = await self.burst(self.daemon.url)
        cpu = proc_cpu_s(pid) - cpu0
        after_mem = proc_mem_kb(pid)
        ttfc = [t for r in results for t in r["ttfc_ms"]]
        ttfc_direct = [t for r in direct for t in r["ttfc_ms"]]
        errors = sum(r["errors"] for r in results)
        if errors:
            self.errors.append(f"many clients: {[r['error_examples'] for r in results]}")
        if any(r["errors"] for r in direct):
            self.errors.append(f"many clients, direct: {[r['error_examples'] for r in direct]}")
        events = sum(r["events"] for r in results)
        out = {
            "clients": p.clients, "client_processes": p.client_procs,
            "events_per_stream": p.paced_events + 1, "interval_s": p.paced_interval,
            "errors": errors, "streams_ok": sum(r["streams_ok"] for r in results),
            "ttfc_p50_ms": rnd(pct(ttfc, 50), 2), "ttfc_p99_ms": rnd(pct(ttfc, 99), 2),
            "ttfc_max_ms": rnd(max(ttfc) if ttfc else None, 2),
            "stream_s_p50": rnd(median([r["stream_s_p50"] for r in results if r["stream_s_p50"]]), 3),
            "direct": {"errors": sum(r["errors"] for r in direct), "ttfc_p50_ms": rnd(pct(ttfc_direct, 50), 2),
                       "ttfc_p99_ms": rnd(pct(ttfc_direct, 99), 2),
                       "stream_s_p50": rnd(median([r["stream_s_p50"] for r in direct if r["stream_s_p50"]]), 3)},
            "events": events,
            "daemon_cpu_s": rnd(cpu, 2),
            "daemon_cpu_us_per_event": rnd(cpu * 1e6 / events, 1) if events else None,
            "daemon_peak_rss_mb": rnd(after_mem["VmHWM"] / 1024, 1) if reset_ok else None,
            "daemon_rss_mb_after": rnd(after_mem["VmRSS"] / 1024, 1),
            "daemon_peak_rss_mb_before_phase": rnd(before_mem["VmHWM"] / 1024, 1),
        }
        log(f"many clients: {p.clients} streams, {errors} errors, ttfc p99 {out['ttfc_p99_ms']} ms "
            f"(direct {out['direct']['ttfc_p99_ms']} ms), daemon cpu {out['daemon_cpu_s']} s, "
            f"peak rss {out['daemon_peak_rss_mb']} MB")
        return out

    # -- everything

    async def run(self, phases: tuple[str, ...]) -> dict:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        results: dict = {}
        pid = self.daemon.proc.pid
        peak_kb = 0
        try:
            await self.sd.connect()
            t0 = time.monotonic()
            if "switch" in phases:
                results["switch_latency"] = {}
                for size in self.plan.sizes:
                    results["switch_latency"][size] = await self.switch_latency(size)
            if "relay" in phases:
                results["relay"] = await self.relay()
            if "stream" in phases:
                results["streaming"] = await self.streaming()
            if "clients" in phases:
                peak_kb = proc_mem_kb(pid)["VmHWM"]  # the phase resets the peak to measure its own
                results["many_clients"] = await self.many_clients()
            mem = proc_mem_kb(pid)
            results["daemon"] = {
                "cpu_s_total": rnd(proc_cpu_s(pid), 2),
                "peak_rss_mb_whole_run": rnd(max(mem["VmHWM"], peak_kb) / 1024, 1),
                "rss_mb_end": rnd(mem["VmRSS"] / 1024, 1),
            }
            results["elapsed_s"] = round(time.monotonic() - t0, 1)
            await self.stop_everything()
        finally:
            await self.http.close()
            await self.sd.close()
        results["errors"] = self.errors
        return results


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, few rounds: a smoke check (~15-30 s)")
    ap.add_argument("--out", help="JSON results file (default bench/results/<time>[-quick].json)")
    ap.add_argument("--sizes", help="comma-separated model sizes (tiny, large); default: both (quick: tiny)")
    ap.add_argument("--relay-backends", metavar="LIST",
                    help="comma-separated backends of the relay phase: scripted and llama-server ones ("
                    f"{', '.join(RELAY_LLAMA)}: model size and -t); default: scripted and the first size's model at -t 1")
    ap.add_argument("--relay-paired-only", action="store_true",
                    help="llama-server backends of --relay-backends: the paired comparison only, not the block cells")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--daemon-python", metavar="EXE",
                    help="run the daemon as EXE -m llm_switch serve … (a wrapper script, e.g. for tracing)")
    ap.add_argument("--variant", metavar="NAME=EXE", action="append", default=[],
                    help="also measure another daemon started as EXE -m llm_switch serve … (e.g. a wrapper that "
                    "runs a patched copy) in phases switch, relay and stream, interleaved with the one under test")
    ap.add_argument("--profile", metavar="DIR", help="sample the daemon with py-spy ($PY_SPY or on PATH) during "
                    "the relay, streaming and many-clients blocks; collapsed stacks and a summary go to DIR "
                    "(figures from such a run are disturbed by the sampling)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    args = ap.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    variants = dict(v.split("=", 1) for v in args.variant if "=" in v)
    if len(variants) != len(args.variant) or any(not n or ":" in n for n in variants):
        ap.error("--variant takes NAME=EXE")
    if set(phases) - set(PHASES):
        ap.error(f"unknown phases: {', '.join(sorted(set(phases) - set(PHASES)))} (choose from {', '.join(PHASES)})")

    plan = Plan.quick() if args.quick else Plan.full()
    if args.sizes:
        sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
        unknown = set(sizes) - set(SIZES)
        if unknown:
            ap.error(f"unknown sizes: {', '.join(sorted(unknown))} (choose from {', '.join(SIZES)})")
        plan.sizes = sizes
    relay_backends = [b.strip() for b in (args.relay_backends or "").split(",") if b.strip()]
    if set(relay_backends) - {"scripted", *RELAY_LLAMA}:
        ap.error(f"unknown relay backends: {', '.join(sorted(set(relay_backends) - {'scripted', *RELAY_LLAMA}))} "
                 f"(choose from scripted, {', '.join(RELAY_LLAMA)})")
    out = Path(args.out) if args.out else (
        BENCH / "results" / (time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json"))

    py_spy = None
    if args.profile:
        py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
        if not py_spy:
            ap.error("--profile needs py-spy: pip install py-spy, or set $PY_SPY")
    server, server_env = harness.find_llama_server()
    info = {**machine_info(server, server_env), "aiohttp": aiohttp.__version__}
    models = {size: ensure_models(size) for size in plan.sizes}
    work = Path(tempfile.mkdtemp(prefix="llm-switch-bench-"))
    log(f"work directory {work}")
    res: dict = {"quick": args.quick, "plan": asdict(plan), "machine": info}
    with contextlib.ExitStack() as stack:
        um = private_systemd(stack, work, args.keep)
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = um.env["DBUS_SESSION_BUS_ADDRESS"]  # the floor's D-Bus client
        bench = Bench(plan, um, work, server, server_env, models)
        if relay_backends:
            bench.relay_scripted = "scripted" in relay_backends
            bench.relay_paired_only = args.relay_paired_only
            bench.relay_llama = {n: (ensure_models(RELAY_LLAMA[n][0])["a"], RELAY_LLAMA[n][1])
                                 for n in relay_backends if n in RELAY_LLAMA}
        if args.profile:
            bench.prof = Profiler(py_spy, Path(args.profile))
        config_path = bench.write_units()
        res["phases"] = list(phases)
        bench.daemon = harness.Daemon(config_path, um.env, log_path=work / "daemon.log",
                                      python=args.daemon_python or sys.executable)
        stack.callback(bench.daemon.stop)
        for name, exe in variants.items():
            cfg = json.loads(config_path.read_text())
            cfg["listen"] = f"127.0.0.1:{harness.free_port()}"
            path = work / f"config-{name}.yaml"
            path.write_text(json.dumps(cfg, indent=2))
            bench.variants[name] = harness.Daemon(path, um.env, log_path=work / f"daemon-{name}.log", python=exe)
            stack.callback(bench.variants[name].stop)
        try:
            res.update(asyncio.run(bench.run(phases)))
        except BaseException:
            log("daemon log tail:\n" + "\n".join(bench.daemon.log().splitlines()[-30:]))
            raise
    info["loadavg_end"] = os.getloadavg()
    res["targets"] = targets(res)
    if bench.prof.summaries:
        res["profiles"] = bench.prof.summaries
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(table(res))
    if bench.prof.summaries:
        print("\n" + bench.prof.report())
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
