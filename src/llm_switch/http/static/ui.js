"use strict";
// The key: given as /ui#key=… (a fragment is never sent to a server, so it stays out of proxies'
// logs and Referer headers) or pasted in the key field; kept for this tab only (sessionStorage),
// sent as a Bearer token. Never read from the query, which lands in history and in logs.
const KEY_NAME = "llm-switch-key";
const given = new URLSearchParams(location.hash.slice(1));
const inQuery = new URLSearchParams(location.search).has("key");
if (given.has("key")) sessionStorage.setItem(KEY_NAME, given.get("key"));
if (given.has("key") || inQuery) history.replaceState(null, "", location.pathname);
function headers() {
  const key = sessionStorage.getItem(KEY_NAME);
  return key ? { Authorization: "Bearer " + key } : {};
}
document.querySelector("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.querySelector("#key-input");
  if (input.value.trim()) sessionStorage.setItem(KEY_NAME, input.value.trim());
  input.value = "";
  location.reload();
});
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;  // not the attribute, which the page's CSP refuses
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(kid ?? ""));
  return e;
};
function size(n) {
  if (n == null) return "–";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0; while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + units[i];
}
const secs = (s) => s == null ? "–" : (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s";
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

// Reads an event stream with fetch (EventSource cannot send the key); reconnects after a pause.
async function stream(url, onEvent, signal) {
  for (;;) {
    try {
      const resp = await fetch(url, { headers: headers(), signal });
      if (!resp.ok) throw new Error(url + ": HTTP " + resp.status + " " + (await resp.text()).slice(0, 200));
      $("#error").textContent = "";
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end); buf = buf.slice(end + 2);
          let kind = "message"; const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
        }
      }
    } catch (e) {
      if (signal && signal.aborted) return;
      $("#error").textContent = String(e.message || e);
    }
    $("#conn").textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

let models = [];
const progress = {};
function renderModels() {
  const body = $("#models tbody");
  body.replaceChildren(...models.map((m) => {
    const mem = m.memory || {};
    const measured = [mem.measured_ram != null ? size(mem.measured_ram) + " RAM" : null,
                      mem.measured_vram != null ? size(mem.measured_vram) + " VRAM" : null].filter(Boolean).join(", ") || "–";
    let state = m.state;
    if (m.state === "starting" && progress[m.model] != null) state += " " + progress[m.model].toFixed(0) + " s";
    const row = el("tr", { "data-model": m.model },
      el("td", {}, m.model, m.pin ? el("span", { class: "pin", title: "pinned: never evicted" }, " (pinned)") : ""),
      el("td", {}, el("span", { class: "state s-" + m.state, title: m.reason || "" }, state)),
      el("td", { class: "num inflight" }, String(m.in_flight)),
      el("td", { class: "num waiting" }, String(m.waiting)),
      el("td", { class: "num" }, size(mem.declared)),
      el("td", { class: "num" }, measured),
      el("td", { class: "num load" }, secs(m.load_s)),
      el("td", {},
        el("button", { class: "load", onclick: () => act("/load/", m.model) }, "load"), " ",
        el("button", { class: "unload", onclick: () => act("/unload/", m.model) }, "unload")));
    return row;
  }));
  const select = $("#log-model");
  if (select.options.length !== models.length) {
    const chosen = select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m.model }, m.model)));
    if (chosen) select.value = chosen;
    if (!chosen && models.length) followLog();
  }
}
async function act(path, model) {
  try {
    const resp = await fetch(path + encodeURIComponent(model), { method: "POST", headers: headers() });
    if (!resp.ok) $("#error").textContent = (await resp.json()).error?.message || ("HTTP " + resp.status);
  } catch (e) { $("#error").textContent = String(e); }
}
function renderSwitches(switches) {
  const box = $("#switches");
  if (!switches.length) return;
  const recent = switches.slice(-12).reverse();
  const longest = Math.max(...recent.map((s) => s.stopped_s + s.ready_s), 0.001);
  box.replaceChildren(...recent.map((s) => {
    const total = s.stopped_s + s.ready_s;
    const bar = el("div", { class: "bar" + (s.ok ? "" : " failed"), title: "stop " + secs(s.stopped_s) + ", load " + secs(s.ready_s) },
      el("div", { class: "stop", style: "width:" + (100 * s.stopped_s / longest) + "%" }),
      el("div", { class: "load", style: "width:" + (100 * s.ready_s / longest) + "%" }));
    return el("div", { class: "switch", "data-to": s.to },
      el("span", {}, clock(s.at)), bar,
      el("span", { class: "label" }, (s.from || "–") + " → " + s.to + ": " + (s.ok ? "" : "FAILED, ") +
         "stopped in " + secs(s.stopped_s) + ", ready in " + secs(s.ready_s) + " (" + secs(total) + ")"));
  }));
}
const requests = [];
function addRequest(r) {
  requests.push(r);
  if (requests.length > 200) requests.shift();
  const body = $("#requests tbody");
  const tokens = r.prompt_tokens != null || r.completion_tokens != null ? (r.prompt_tokens ?? "?") + " / " + (r.completion_tokens ?? "?") : "–";
  body.prepend(el("tr", { "data-model": r.model },
    el("td", {}, clock(r.at)), el("td", {}, r.model), el("td", {}, r.route),
    el("td", { class: r.status >= 400 ? "err" : "" }, String(r.status)),
    el("td", { class: "num" }, r.waited_s ? secs(r.waited_s) : "–"), el("td", { class: "num" }, secs(r.seconds)),
    el("td", { class: "num" }, tokens),
    el("td", { class: "num tps" }, r.generation_tps != null ? r.generation_tps.toFixed(1) : "–")));
  while (body.children.length > 50) body.lastChild.remove();
  renderTps();
}
function renderTps() {
  const pts = requests.filter((r) => r.generation_tps != null).slice(-40);
  if (!pts.length) return;
  const max = Math.max(...pts.map((r) => r.generation_tps)) * 1.1;
  const w = 400, h = 80, step = w / Math.max(pts.length, 2);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 10}`);
  svg.setAttribute("preserveAspectRatio", "none");
  pts.forEach((r, i) => {
    const bh = Math.max(1, h * r.generation_tps / max);
    const rect = document.createElementNS(ns, "rect");
    Object.entries({ x: i * step + 1, y: h - bh, width: Math.max(step - 2, 1), height: bh, fill: "#1f9d55" })
      .forEach(([k, v]) => rect.setAttribute(k, v));
    const title = document.createElementNS(ns, "title");
    title.textContent = r.model + ": " + r.generation_tps.toFixed(1) + " tok/s";
    rect.append(title); svg.append(rect);
  });
  const last = pts[pts.length - 1];
  $("#tps").replaceChildren(svg, el("div", { class: "dim" },
    "last: " + last.model + " " + last.generation_tps.toFixed(1) + " tok/s; max " + (max / 1.1).toFixed(1)));
}

let logAbort = null;
async function followLog() {
  const model = $("#log-model").value;
  if (logAbort) logAbort.abort();
  if (!model) return;
  const ctl = logAbort = new AbortController();
  const pre = $("#log");
  pre.textContent = "";
  try {
    const resp = await fetch("/logs/" + encodeURIComponent(model) + "?follow=1&lines=100", { headers: headers(), signal: ctl.signal });
    if (!resp.ok) { pre.textContent = "HTTP " + resp.status + ": " + await resp.text(); return; }
    $("#log-unit").textContent = resp.headers.get("X-Unit") || "";
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += decoder.decode(value, { stream: true });
      if (pre.textContent.length > 200000) pre.textContent = pre.textContent.slice(-150000);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) { if (!ctl.signal.aborted) pre.textContent += "\n(" + e + ")"; }
}
$("#log-model").addEventListener("change", followLog);

if (inQuery) $("#notice").textContent = "the key in the address was not used: a query is kept in history and " +
  "in proxies' logs; open /ui#key=… or paste the key in the field";
stream("/ui/events", (kind, data) => {
  $("#conn").textContent = "live";
  if (kind === "snapshot") {
    models = data.status.models; renderModels(); renderSwitches(data.status.switches);
    requests.length = 0; $("#requests tbody").replaceChildren(); data.requests.forEach(addRequest);
  } else if (kind === "models") {
    models = data.models;
    for (const m of models) if (m.state !== "starting") delete progress[m.model];
    renderModels(); renderSwitches(data.switches);
  } else if (kind === "progress") {
    progress[data.model] = data.elapsed_s; renderModels();
  } else if (kind === "request") {
    for (const m of models) if (data.counts && data.counts[m.model]) [m.in_flight, m.waiting] = data.counts[m.model];
    renderModels();
    addRequest(data);
  }
});
