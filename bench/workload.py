"""Agent-session workload: one client working like a coding agent, against several ways of serving
three models, side by side in one run.

    .venv/bin/python bench/workload.py [--quick] [--turns N] [--methods a,b] [--out FILE.json]

Models: a coder and a thinker (~410 MB chat models each; tiny ones with --quick) and a tiny
embedding model (``--embeddings --pooling mean``). Each turn of the session:

1. the coder gets the session's conversation so far (~1.5k tokens at turn 1, ~200 more each
   turn, always the same prefix, so a prompt cache can help), streamed, ``max_tokens`` 8;
2. the embedding model gets a batch of 8 inputs;
3. every third turn (turns 2, 5, 8, 11: so that a coder turn follows each) the thinker gets its
   own growing conversation the same way.

Methods (a table: METHODS below), each with its own servers, all up at once; the turns of the
methods are interleaved, the order rotated every turn, so drift on a shared machine hits all
alike. Per method: total time of its requests, model loads (starts of a model process, counted
from outside: systemd's ExecStartPre marks of each unit, or the router's "spawning server
instance" log lines), and time to first token of the coder turns, especially those that follow
a thinker turn (the switch back).

Needs what the end-to-end tests need (root, systemd, dbus-user-session, a llama-server: see
../tests/support/harness.py). Writes every figure, per request, to bench/results/workload-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchkit import (  # noqa: E402
    ensure_models, harness, log, machine_info, median, private_systemd, ratio, rnd, router_loads, tail, text,
    unit_loads)

CHAT_LARGE = {"hidden": 1024, "blocks": 8, "ffn": 2816}
MODELS = ("coder", "thinker", "embed")
CHAT_MODELS = ("coder", "thinker")
# declared memory for the budget methods: coder + embed fit in the budget, the two chat models not
MEMORY = {"coder": "450M", "thinker": "450M", "embed": "16M"}
BUDGET = "600M"
EMBED_ARGS = {"ctx-size": "2048", "parallel": "2", "embeddings": "true", "pooling": "mean"}


@dataclass(frozen=True)
class Method:
    """One way of serving the three models. ``kind`` "router": llama.cpp's router mode with
    ``--models-max``; "switch": llm-switch, each model its own llama-server unit on its own port,
    with the ``config`` keys added to the top level of its config.yaml (``memory`` per model
    when ``budget``) and ``unit_args`` added to every model unit."""
    kind: str
    help: str
    default: bool = True
    models_max: int = 0
    budget: bool = False
    config: dict = field(default_factory=dict)
    unit_args: tuple[str, ...] = ()
    slot_dir: bool = False   # give the units --slot-save-path <work>/<method>/slots


METHODS: dict[str, Method] = {
    "router-max1": Method("router", "llama.cpp router, --models-max 1 (one model at a time)", models_max=1),
    "router-all": Method("router", "llama.cpp router, --models-max 3 (all three resident)", models_max=3),
    "switch": Method("switch", f"llm-switch with memory_budget {BUDGET} (coder+embed fit, not both chat models)",
                     budget=True, config={"memory_budget": BUDGET}),
    "switch-exclusive": Method("switch", "llm-switch without a budget: one model at a time (the before figure)"),
    "switch-cache": Method("switch", "switch + prompt cache (llama-server --slot-save-path, prompt_cache: true)",
                           budget=True, config={"memory_budget": BUDGET, "prompt_cache": True}, slot_dir=True),
}
DEFAULT_METHODS = tuple(n for n, m in METHODS.items() if m.default)


@dataclass
class Plan:
    size: str                 # "large" (~410 MB chat models) or "tiny"
    turns: int
    system_chars: int = 1300  # each conversation's first message
    user_chars: int = 130     # each turn adds a user and an assistant message: ~200 tokens with the template
    assistant_chars: int = 50
    embed_inputs: int = 8
    embed_chars: int = 200
    max_tokens: int = 8
    thinker_every: int = 3    # the thinker on turns where turn % 3 == 2
    threads: int = 2

    def thinker_turn(self, turn: int) -> bool:
        return turn % self.thinker_every == 2 % self.thinker_every

    def ctx(self) -> int:
        """Context per slot that holds the longest conversation (one token per character, plus
        ~10 template tokens per message), rounded up to 1024, at least 4096."""
        longest = self.system_chars + 12 + self.turns * (self.user_chars + 12) \
            + (self.turns - 1) * (self.assistant_chars + 12) + self.max_tokens + 64
        return max(4096, -(-longest // 1024) * 1024)


# -- the session's requests ---------------------------------------------------------------------

class Conversation:
    """A conversation that grows by one user and one canned assistant message per turn; the
    same for every method (the canned replies keep the prompts identical across methods)."""

    def __init__(self, seed: int, plan: Plan) -> None:
        rng = random.Random(seed)
        self.plan = plan
        self.system = text(rng, plan.system_chars)
        self.users = [text(rng, plan.user_chars) for _ in range(plan.turns + 1)]
        self.replies = [text(rng, plan.assistant_chars) for _ in range(plan.turns + 1)]

    def messages(self, n: int) -> list[dict]:
        """The messages of this conversation's n-th request (n from 1)."""
        msgs = [{"role": "system", "content": self.system}]
        for k in range(n - 1):
            msgs += [{"role": "user", "content": self.users[k]}, {"role": "assistant", "content": self.replies[k]}]
        msgs.append({"role": "user", "content": self.users[n - 1]})
        return msgs


def embed_inputs(plan: Plan, turn: int) -> list[str]:
    rng = random.Random(1000 + turn)
    return [text(rng, plan.embed_chars) for _ in range(plan.embed_inputs)]


# -- the methods' servers -----------------------------------------------------------------------

class Server:
    """A method's servers: a base URL to send the session to, a count of model starts."""

    def __init__(self, name: str, method: Method, bench: Workload) -> None:
        self.name, self.method, self.bench = name, method, bench
        self.dep = harness.Deployment(bench.um, bench.work / name, tag=f"wl-{name}", llama=bench.llama)
        self.base = ""
        self.backends: dict[str, harness.Backend] = {}
        self.router: harness.Backend | None = None

    def start(self) -> None:
        plan, paths = self.bench.plan, self.bench.models
        server, _ = self.bench.llama
        ctx = str(plan.ctx())
        chat = {"ctx-size": ctx, "parallel": "1", "override-kv": f"llama.context_length=int:{ctx}"}
        if self.method.kind == "router":
            preset = self.dep.dir / "preset.ini"
            preset.write_text("".join(
                f"[{m}]\n" + "".join(f"{k} = {v}\n" for k, v in (EMBED_ARGS if m == "embed" else chat).items()) + "\n"
                for m in MODELS))
            port = harness.free_port()
            argv = [server, "--models-dir", str(paths["coder"].parent), "--models-preset", str(preset),
                    "--models-max", str(self.method.models_max), "--host", "127.0.0.1", "--port", str(port),
                    "--no-webui", "--no-warmup", "-t", str(plan.threads)]
            self.router = self.dep.command_unit("router", argv, port=port, env=self.bench.llama[1],
                                                description=f"llama.cpp router ({self.name})")
            self.dep.reload()
            self.bench.um.systemctl("start", self.router.unit)
            self.base = self.router.url
            harness.wait_for(lambda: harness.http_get(self.base + "/health", timeout=2)[0] == 200, 60,
                             what=f"{self.name} /health")
            return
        models = {}
        for m in MODELS:
            args = EMBED_ARGS if m == "embed" else chat
            extra = ["-t", str(plan.threads)]
            for k, v in args.items():
                extra += [f"--{k}"] if v == "true" else [f"--{k}", v]
            if self.method.slot_dir:
                slots = self.dep.dir / "slots" / m
                slots.mkdir(parents=True, exist_ok=True)
                extra += ["--slot-save-path", str(slots)]
            extra += list(self.method.unit_args)
            b = self.dep.llama_unit(m, paths[m], alias=m, extra_args=extra)
            self.backends[m] = b
            entry: dict = {"unit": b.unit, "url": b.url}
            if self.method.budget:
                entry["memory"] = MEMORY[m]
            models[m] = entry
        top = dict(self.method.config)
        if self.method.slot_dir:  # where the units save their slots: <prompt_cache_dir>/<model>
            top["prompt_cache_dir"] = str(self.dep.dir / "slots")
        config = self.dep.write_config(models, health_timeout=300, **top)
        daemon = self.dep.start(config, python=self.bench.daemon_python)
        self.base = daemon.url

    def loads(self) -> dict[str, int]:
        if self.router is not None:
            counts = router_loads(self.router.log_path)
            return {m: counts.get(m, 0) for m in MODELS}
        return {m: unit_loads(b) for m, b in self.backends.items()}

    def debug(self) -> str:
        if self.router is not None:
            return tail(self.router.log(), 30)
        return tail(self.dep.debug_dump(), 60)

    def close(self) -> None:
        self.dep.close()  # the daemon, then every unit (the router's too)


# -- the workload -------------------------------------------------------------------------------

class Workload:
    def __init__(self, plan: Plan, um: harness.UserManager, work: Path, llama: tuple[str, dict[str, str]],
                 models: dict[str, Path], daemon_python: str) -> None:
        self.plan, self.um, self.work, self.llama, self.models = plan, um, work, llama, models
        self.daemon_python = daemon_python
        self.coder = Conversation(1, plan)
        self.thinker = Conversation(2, plan)
        self.http: aiohttp.ClientSession | None = None

    async def chat(self, base: str, model: str, messages: list[dict]) -> dict:
        """One streamed chat request; its times and what the stream said."""
        body = {"model": model, "messages": messages, "max_tokens": self.plan.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        rec: dict = {"model": model, "prompt_chars": sum(len(m["content"]) for m in messages)}
        first = ttft = None
        done = False
        t0 = time.perf_counter()
        try:
            async with self.http.post(f"{base}/v1/chat/completions", json=body,
                                      timeout=aiohttp.ClientTimeout(total=900)) as r:
                if r.status != 200:
                    rec["error"] = f"HTTP {r.status}: {(await r.text())[:300]}"
                else:
                    async for raw in r.content:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        now = time.perf_counter() - t0
                        first = first if first is not None else now
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        ev = json.loads(data)
                        if "error" in ev:
                            rec["error"] = f"stream error: {str(ev['error'])[:300]}"
                        if ev.get("model") and ev["model"] != model:
                            rec["error"] = f"asked for {model}, answered by {ev['model']}"
                        for ch in ev.get("choices") or []:
                            d = ch.get("delta") or {}
                            # the model's first token: llm-switch's loading progress (reasoning_content
                            # while the request waits) is not one
                            if ttft is None and d.get("content"):
                                ttft = now
                        if ev.get("usage"):
                            rec["prompt_tokens"] = ev["usage"].get("prompt_tokens")
                        if ev.get("timings"):
                            rec["prefill_tokens"] = ev["timings"].get("prompt_n")
                            rec["prefill_ms"] = rnd(ev["timings"].get("prompt_ms"), 1)
                    if not done and "error" not in rec:
                        rec["error"] = "stream ended without [DONE]"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["s"] = rnd(time.perf_counter() - t0)
        # time to the first token; a model that stops at once gives no text: its first event then
        rec["ttft_s"] = rnd(ttft if ttft is not None else first)
        return rec

    async def embed(self, base: str, inputs: list[str]) -> dict:
        rec: dict = {"model": "embed", "inputs": len(inputs)}
        t0 = time.perf_counter()
        try:
            async with self.http.post(f"{base}/v1/embeddings", json={"model": "embed", "input": inputs},
                                      timeout=aiohttp.ClientTimeout(total=600)) as r:
                body = await r.text()
                if r.status != 200:
                    rec["error"] = f"HTTP {r.status}: {body[:300]}"
                else:
                    data = json.loads(body).get("data") or []
                    if len(data) != len(inputs) or not all(d.get("embedding") for d in data):
                        rec["error"] = f"{len(data)} embeddings for {len(inputs)} inputs"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["s"] = rnd(time.perf_counter() - t0)
        return rec

    async def turn(self, srv: Server, turn: int, thinker_n: int) -> list[dict]:
        """One turn of the session against one method: coder, embeddings, maybe thinker."""
        steps = [("coder", lambda: self.chat(srv.base, "coder", self.coder.messages(turn))),
                 ("embed", lambda: self.embed(srv.base, embed_inputs(self.plan, turn)))]
        if self.plan.thinker_turn(turn):
            steps.append(("thinker", lambda: self.chat(srv.base, "thinker", self.thinker.messages(thinker_n))))
        out = []
        for model, call in steps:
            before = srv.loads()[model]
            rec = await call()
            rec["turn"] = turn
            rec["loaded"] = srv.loads()[model] - before  # starts of this model during the request
            if "error" in rec:
                log(f"{srv.name} turn {turn} {model}: {rec['error']}", "workload")
            out.append(rec)
        return out

    async def session(self, servers: list[Server]) -> dict[str, list[dict]]:
        self.http = aiohttp.ClientSession()
        records: dict[str, list[dict]] = {s.name: [] for s in servers}
        thinker_n = 0
        try:
            for turn in range(1, self.plan.turns + 1):
                if self.plan.thinker_turn(turn):
                    thinker_n += 1
                k = (turn - 1) % len(servers)
                for srv in servers[k:] + servers[:k]:
                    recs = await self.turn(srv, turn, thinker_n)
                    records[srv.name] += recs
                log(f"turn {turn}/{self.plan.turns}: " + ", ".join(
                    f"{s.name} {sum(r['s'] for r in records[s.name] if r['turn'] == turn):.2f} s" for s in servers),
                    "workload")
        finally:
            await self.http.close()
        return records


def summarize(recs: list[dict], loads: dict[str, int], plan: Plan) -> dict:
    coder = [r for r in recs if r["model"] == "coder"]
    thinker_turns = {t for t in range(1, plan.turns + 1) if plan.thinker_turn(t)}
    after_thinker = [r["ttft_s"] for r in coder if r["turn"] - 1 in thinker_turns]
    later = [r for r in coder if r["turn"] > 1]
    return {
        "total_s": rnd(sum(r["s"] for r in recs), 3),
        "loads": sum(loads.values()),
        "loads_by_model": loads,
        "coder_s": rnd(sum(r["s"] for r in coder), 3),
        "thinker_s": rnd(sum(r["s"] for r in recs if r["model"] == "thinker"), 3),
        "embed_s": rnd(sum(r["s"] for r in recs if r["model"] == "embed"), 3),
        # the switch back: coder turns right after a thinker turn
        "coder_ttft_after_thinker_s": rnd(median([t for t in after_thinker if t is not None])),
        # coder turns (after the first) that had to start the coder, and those that found it running
        "coder_ttft_reloaded_s": rnd(median([r["ttft_s"] for r in later if r["loaded"] and r["ttft_s"] is not None])),
        "coder_ttft_resident_s": rnd(median([r["ttft_s"] for r in later
                                             if not r["loaded"] and r["ttft_s"] is not None])),
        "coder_reloads": sum(1 for r in later if r["loaded"]),
        "prefill_tokens": sum(r.get("prefill_tokens") or 0 for r in recs),
        "requests": len(recs),
        "errors": [f"turn {r['turn']} {r['model']}: {r['error']}" for r in recs if "error" in r],
        "records": recs,
    }


def targets(methods: dict) -> list[dict]:
    rows = []

    def total(name: str) -> float | None:
        m = methods.get(name)
        return m["total_s"] if m and "total_s" in m and not m["errors"] else None

    def add(a: str, b: str, limit: float, why: str) -> None:
        if a in methods and b in methods:
            v = rnd(ratio(total(a), total(b)), 3)
            rows.append({"target": f"{a} / {b} total", "value": v, "wanted": f"≤ {limit}", "why": why,
                         "ok": v is not None and v <= limit})

    add("switch", "router-max1", 0.7, "memory budget issue")
    add("switch-cache", "router-all", 1.5, "prompt cache issue")
    add("switch-cache", "router-max1", 0.4, "prompt cache issue")
    # the switch back with the cache against the same switch back without it (cold prefill)
    if "switch-cache" in methods and "switch" in methods:
        warm = methods["switch-cache"].get("coder_ttft_after_thinker_s")
        cold = methods["switch"].get("coder_ttft_after_thinker_s")
        v = rnd(ratio(warm, cold), 3)
        rows.append({"target": "switch-cache / switch coder TTFT after the thinker", "value": v, "wanted": "≤ 0.15",
                     "why": "prompt cache issue", "ok": v is not None and v <= 0.15})
    return rows


def fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def table(res: dict) -> str:
    m = res["machine"]
    p = res["plan"]
    lines = [f"Agent-session workload ({'quick' if res['quick'] else 'full'}: {p['turns']} turns, {p['size']} chat "
             f"models, context {res['ctx']}; {res.get('elapsed_s', '?')} s) on {m.get('Model name', '?')}, "
             f"{m.get('cpus')} CPUs; llama-server {m.get('llama_server', '?')}; llm-switch {m.get('git', '?')}",
             "",
             "| method | total | / router-max1 | / router-all | loads (coder, thinker, embed) | coder reloads "
             "| coder TTFT after thinker | coder TTFT resident | prefill tokens | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    methods = res["methods"]

    def tot(name: str) -> float | None:
        return methods.get(name, {}).get("total_s")

    for name, r in methods.items():
        if "total_s" not in r:
            why = r["errors"][0].strip().splitlines()[-1][:120].replace("|", "/")
            lines.append(f"| {name} | did not run | | | | | | | | {why} |")
            continue
        lb = r["loads_by_model"]
        v1, v2 = ratio(r["total_s"], tot("router-max1")), ratio(r["total_s"], tot("router-all"))
        lines.append(f"| {name} | {fmt_s(r['total_s'])} | {'–' if v1 is None else f'{v1:.2f}'} | "
                     f"{'–' if v2 is None else f'{v2:.2f}'} | {r['loads']} ({lb['coder']}, {lb['thinker']}, "
                     f"{lb['embed']}) | {r['coder_reloads']} | {fmt_s(r['coder_ttft_after_thinker_s'])} | "
                     f"{fmt_s(r['coder_ttft_resident_s'])} | {r['prefill_tokens']} | {len(r['errors'])} |")
    if res["targets"]:
        lines += ["", "Targets", "", "| target | value | wanted | met |", "|---|---|---|---|"]
        for t in res["targets"]:
            v = "–" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"| {t['target']} ({t['why']}) | {v} | {t['wanted']} | {'yes' if t['ok'] else 'NO'} |")
    if res["errors"]:
        lines += ["", f"{len(res['errors'])} errors, first: {res['errors'][0][:300]}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="methods:\n" + "\n".join(
                                     f"  {n:18} {m.help}{'' if m.default else ' (only with --methods)'}"
                                     for n, m in METHODS.items()))
    ap.add_argument("--quick", action="store_true", help="tiny chat models, 3 turns: a smoke check")
    ap.add_argument("--turns", type=int, help="turns of the session (default 12; --quick: 3)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t for every model (default 2)")
    ap.add_argument("--out", help="JSON results file (default bench/results/workload-<time>[-quick].json)")
    ap.add_argument("--daemon-python", metavar="EXE", default=sys.executable,
                    help="run llm-switch as EXE -m llm_switch serve … (e.g. a wrapper that sets PYTHONPATH to "
                    "another checkout's src)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, unit and daemon logs)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        ap.error(f"unknown methods: {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    plan = Plan(size="tiny" if args.quick else "large", turns=args.turns or (3 if args.quick else 12),
                threads=args.threads)
    if plan.turns < 1:
        ap.error("--turns must be at least 1")
    out = Path(args.out) if args.out else BENCH / "results" / (
        "workload-" + time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json")

    llama = harness.find_llama_server()
    chat_kw = {} if args.quick else CHAT_LARGE
    models = ensure_models(f"workload-{plan.size}", {
        "coder": {"seed": "wl-coder", **chat_kw}, "thinker": {"seed": "wl-thinker", **chat_kw},
        "embed": {"seed": "wl-embed"}})
    res: dict = {"quick": args.quick, "plan": asdict(plan), "ctx": plan.ctx(), "methods_run": names,
                 "machine": machine_info(llama[0], llama[1], None if args.daemon_python == sys.executable
                                         else args.daemon_python),
                 "memory": MEMORY, "budget": BUDGET}
    work = Path(tempfile.mkdtemp(prefix="llm-switch-workload-"))
    log(f"work directory {work}; methods {', '.join(names)}; {plan.turns} turns; context {plan.ctx()}", "workload")
    errors: list[str] = []
    methods: dict[str, dict] = {}
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        um = private_systemd(stack, work, args.keep)
        wl = Workload(plan, um, work, llama, models, args.daemon_python)
        servers = []
        for name in names:
            srv = Server(name, METHODS[name], wl)
            stack.callback(srv.close)
            try:
                srv.start()
                servers.append(srv)
            except harness.HarnessError as exc:
                msg = f"{name} did not start: {tail(str(exc), 8)}"
                log(msg, "workload")
                methods[name] = {"errors": [msg]}
        records = asyncio.run(wl.session(servers)) if servers else {}
        for srv in servers:
            methods[srv.name] = summarize(records[srv.name], srv.loads(), plan)
            if srv.method.kind == "switch":  # what the daemon says of each model's prompt cache
                status = json.loads(harness.http_get(srv.base + "/status", timeout=10)[1] or b"{}")
                methods[srv.name]["prompt_cache"] = {m["model"]: m.get("prompt_cache")
                                                     for m in status.get("models", [])}
            if methods[srv.name]["errors"]:
                log(f"{srv.name} had errors; its servers said:\n{srv.debug()}", "workload")
    res["methods"] = {n: methods[n] for n in names}
    for n in names:
        errors += [f"{n}: {e}" for e in methods[n]["errors"]]
    res["errors"] = errors
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["targets"] = targets(res["methods"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nJSON: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
