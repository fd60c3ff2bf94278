"""The bench's verdicts and its table: targets from the issue, figures as Markdown."""

from __future__ import annotations


def targets(res: dict) -> list[dict]:
    rows = []

    def add(name: str, value, target: str, ok: bool | None) -> None:
        rows.append({"target": name, "value": value, "wanted": target, "ok": ok})

    sl = res.get("switch_latency", {})
    if "large" in sl:
        v = sl["large"]["switch_vs_router"]
        add("large: switch / router", v, "≤ 1.05", v is not None and v <= 1.05)
        v = sl["large"]["switch_vs_floor"]
        add("large: switch / floor", v, "≤ 1.05", v is not None and v <= 1.05)
    if "tiny" in sl:
        v = sl["tiny"]["switch_vs_router"]
        add("tiny: switch / router", v, "≤ 1.5", v is not None and v <= 1.5)
    for cell in res.get("relay", {}).get("cells", []):
        if cell["client"] == "httpx" and cell["connection"] == "keep-alive":
            v = cell["switch"]["added_p50_ms_paired"]
            add(f"added p50, {cell['backend']} {cell['path']}, keep-alive (ms, paired)", v, "< 1",
                v is not None and v < 1)
    if "streaming" in res:
        v = res["streaming"]["rate_ratio"]
        add("streaming relay / direct chunk rate", v, "≥ 0.80", v is not None and v >= 0.8)
    if "many_clients" in res:
        mc = res["many_clients"]
        add(f"errors with {mc['clients']} streaming clients", mc["errors"], "0", mc["errors"] == 0)
    v = res["daemon"]["peak_rss_mb_whole_run"]
    add("daemon peak RSS (MB)", v, "< 60", v is not None and v < 60)
    add("errors in the whole run", len(res["errors"]), "0", not res["errors"])
    return rows


def fmt(x, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}{unit}"
    return f"{x}{unit}"


def ms(x: float | None) -> str:
    return fmt(None if x is None else x * 1000, " ms")


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"llm-switch bench ({'quick' if res['quick'] else 'full'}, {res.get('elapsed_s', '?')} s) on "
             f"{m.get('Model name', '?')}, {m.get('cpus')} CPUs, load average {m['loadavg_start'][0]:.2f} at start, "
             f"{m.get('loadavg_end', [0])[0]:.2f} at end; llama-server {m.get('llama_server', '?')}; "
             f"llm-switch {m.get('git', '?')}"]
    if "switch_latency" in res:
        lines += ["", "1. Switch latency: a 1-token chat request that needs the other model (median of A↔B "
                  "alternations; blocks of each method interleaved)", "",
                  "| models | floor (D-Bus stop+start, 5 ms /health poll) | llama.cpp router | llm-switch | "
                  "switch/router | switch/floor | router/floor |", "|---|---|---|---|---|---|---|"]
        for size, s in res["switch_latency"].items():
            lines.append(f"| {size} ({s['rounds']} switches) | {ms(s['floor']['median_s'])} | "
                         f"{ms(s['router']['median_s'])} | {ms(s['switch']['median_s'])} | "
                         f"{fmt(s['switch_vs_router'], '', 2)} (paired {fmt(s['switch_vs_router_paired'], '', 2)}) | "
                         f"{fmt(s['switch_vs_floor'], '', 2)} (paired {fmt(s['switch_vs_floor_paired'], '', 2)}) | "
                         f"{fmt(s['router_vs_floor'], '', 2)} |")
        for size, s in res["switch_latency"].items():
            for v in (k for k in s if k.startswith("variant:") and "_vs_" not in k):
                lines.append(f"| {size}, {v} | | | {ms(s[v]['median_s'])} | {fmt(s[v + '_vs_router'], '', 2)} (paired "
                             f"{fmt(s[v + '_vs_router_paired'], '', 2)}) | {fmt(s[v + '_vs_floor'], '', 2)} (paired "
                             f"{fmt(s[v + '_vs_floor_paired'], '', 2)}) | vs llm-switch "
                             f"{fmt(s[v + '_vs_switch_paired'], '', 2)} (paired) |")
        for size, s in res["switch_latency"].items():
            fb = s["floor"].get("breakdown_median_s", {})
            sb = s["switch"].get("breakdown_median_s", {})
            lines.append(f"   {size}: floor = stop {ms(fb.get('stop_s'))} + start job {ms(fb.get('start_job_s'))} + "
                         f"health {ms(fb.get('health_s'))} + request {ms(fb.get('request_s'))}; llm-switch's own "
                         f"/status: stopped {ms(sb.get('stopped_s'))} + ready {ms(sb.get('ready_s'))}")
    if "relay" in res:
        rl = res["relay"]
        lines += ["", f"2. Relay overhead, non-streaming: 1-token requests, model loaded, closed loop; "
                  f"{rl['passes']} passes, the targets of a cell back to back (load average "
                  f"{rl['loadavg_start'][0]:.2f} → {rl['loadavg_end'][0]:.2f})", "",
                  "| backend | API | client | connection | clients | direct p50 / p99 | llm-switch p50 / p99 | "
                  "added p50 (paired) | direct req/s | llm-switch req/s | daemon CPU per request |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rl["cells"]:
            d, s = row["direct"], row["switch"]
            lines.append(f"| {row['backend']} | {row['path']} | {row['client']} | {row['connection']} | "
                         f"{row['concurrency']} | {fmt(d['p50_ms'], '', 2)} / {fmt(d['p99_ms'], ' ms', 2)} | "
                         f"{fmt(s['p50_ms'], '', 2)} / {fmt(s['p99_ms'], ' ms', 2)} | "
                         f"{fmt(s['added_p50_ms'], '', 2)} ({fmt(s['added_p50_ms_paired'], ' ms', 2)}) | "
                         f"{fmt(d['throughput_rps'], '', 0)} | {fmt(s['throughput_rps'], '', 0)} | "
                         f"{fmt(s.get('daemon_cpu_us_per_request'), ' µs', 0)} |")
            for v in (k for k in row if k.startswith("variant:")):
                w = row[v]
                lines.append(f"| {v} | | | | | | {fmt(w['p50_ms'], '', 2)} / {fmt(w['p99_ms'], ' ms', 2)} | "
                             f"{fmt(w['added_p50_ms'], '', 2)} ({fmt(w['added_p50_ms_paired'], ' ms', 2)}) | | "
                             f"{fmt(w['throughput_rps'], '', 0)} | {fmt(w.get('daemon_cpu_us_per_request'), ' µs', 0)} |")
    if "paired" in res.get("relay", {}):
        lines += ["", "2b. Paired, chat, 1 token: one request per route in turn, order rotated; p50 and the median "
                  "of per-round differences to a kept-alive connection straight to llama-server", "",
                  "| backend | route | p50 | added (paired) |", "|---|---|---|---|"]
        for name, r in res["relay"]["paired"].items():
            for route, v in r["routes"].items():
                lines.append(f"| {name} | {route} | {fmt(v['p50_ms'], ' ms', 2)} | {fmt(v['added_ms_paired'], ' ms', 2)} |")
            cpu = r.get("cpu_us_per_request", {})
            lines.append(f"| {name} | CPU per request | switch {fmt(cpu.get('switch'), ' µs', 0)} | "
                         f"TCP forwarder {fmt(cpu.get('tcp-forward'), ' µs', 0)} |")
    if "streaming" in res:
        st = res["streaming"]
        lines += ["", f"3. Relay overhead, streaming: one stream of {st['events_per_stream']} SSE chunks from a "
                  f"scripted backend writing as fast as it can (median of {st['streams']})", "",
                  "| path | chunks/s | time to first chunk | daemon CPU per chunk |", "|---|---|---|---|",
                  f"| direct | {fmt(st['direct']['chunks_per_s'], '', 0)} | {fmt(st['direct']['ttfc_ms'], ' ms', 2)} | |",
                  f"| llm-switch | {fmt(st['switch']['chunks_per_s'], '', 0)} | "
                  f"{fmt(st['switch']['ttfc_ms'], ' ms', 2)} | {fmt(st['switch']['daemon_cpu_us_per_chunk'], ' µs', 2)} |",
                  f"| ratio / added | {fmt(st['rate_ratio'], '', 2)} | +{fmt(st['added_ttfc_ms'], ' ms', 2)} | |"]
        for v in (k for k in st if k.startswith("variant:")):
            lines.append(f"| {v} | {fmt(st[v]['chunks_per_s'], '', 0)} (ratio {fmt(st[v]['rate_ratio'], '', 2)}) | "
                         f"{fmt(st[v]['ttfc_ms'], ' ms', 2)} | {fmt(st[v]['daemon_cpu_us_per_chunk'], ' µs', 2)} |")
    if "many_clients" in res:
        mc = res["many_clients"]
        lines += ["", f"4. Many clients: {mc['clients']} concurrent streams through llm-switch from "
                  f"{mc['client_processes']} client process(es), {mc['events_per_stream']} chunks each, one every "
                  f"{mc['interval_s'] * 1000:.0f} ms", "",
                  "| path | errors | TTFC p50 | TTFC p99 | stream p50 | daemon CPU | daemon peak RSS |",
                  "|---|---|---|---|---|---|---|",
                  f"| direct | {mc['direct']['errors']} | {fmt(mc['direct']['ttfc_p50_ms'], ' ms')} | "
                  f"{fmt(mc['direct']['ttfc_p99_ms'], ' ms')} | {fmt(mc['direct']['stream_s_p50'], ' s', 2)} | | |",
                  f"| llm-switch | {mc['errors']} | {fmt(mc['ttfc_p50_ms'], ' ms')} | {fmt(mc['ttfc_p99_ms'], ' ms')} | "
                  f"{fmt(mc['stream_s_p50'], ' s', 2)} | {fmt(mc['daemon_cpu_s'], ' s', 2)} "
                  f"({fmt(mc['daemon_cpu_us_per_event'], ' µs/chunk')}) | {fmt(mc['daemon_peak_rss_mb'], ' MB')} |"]
    d = res["daemon"]
    lines += ["", f"Daemon over the whole run: CPU {fmt(d['cpu_s_total'], ' s', 2)}, peak RSS "
              f"{fmt(d['peak_rss_mb_whole_run'], ' MB')}, RSS at end {fmt(d['rss_mb_end'], ' MB')}", "",
              "Targets", "", "| target | value | wanted | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {fmt(t['value'], '', 3)} | {t['wanted']} | {'yes' if t['ok'] else 'NO'} |")
    if res["errors"]:
        lines += ["", f"ERRORS ({len(res['errors'])}):", *(f"  {e}" for e in res["errors"][:20])]
    return "\n".join(lines)
