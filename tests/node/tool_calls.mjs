// The openai npm package (what Roo Code is built on) reads tool calls through llm-switch.
//
//   node tool_calls.mjs PACKAGE BASE_URL CASES.json
//
// PACKAGE is "openai" or "openai-v5" (an npm alias, see package.json). CASES.json is a list of
// {name, model, tools}; for each case, in order, three requests are made — non-streaming,
// streaming read chunk by chunk (deltas folded by index, as Roo Code does), and the SDK's own
// accumulator (chat.completions.stream(...).finalChatCompletion()) — and what the client saw is
// printed as JSON on stdout, one object per case. tests/test_tool_calls.py makes the assertions.

import { readFileSync } from "node:fs";

const [pkg, baseURL, casesPath] = process.argv.slice(2);
const { default: OpenAI } = await import(pkg);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 180_000 });
const cases = JSON.parse(readFileSync(casesPath, "utf8"));

function request(c, extra) {
  const body = { model: c.model, messages: [{ role: "user", content: "go" }], ...extra };
  if (c.tools) body.tools = c.tools;
  return body;
}

function message(m) {
  return {
    content: m.content ?? null,
    tool_calls: (m.tool_calls ?? []).map((t) => ({
      id: t.id,
      type: t.type,
      name: t.function.name,
      arguments: t.function.arguments,
    })),
  };
}

const out = [];
for (const c of cases) {
  const result = { name: c.name };

  const reply = await client.chat.completions.create(request(c, {}));
  result.nonstream = { ...message(reply.choices[0].message), finish_reason: reply.choices[0].finish_reason };

  // Chunk by chunk: text concatenated, tool calls folded by index.
  const stream = await client.chat.completions.create(request(c, { stream: true }));
  let content = null;
  let finish = null;
  const calls = new Map();
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices ?? []) {
      const d = choice.delta ?? {};
      if (typeof d.content === "string") content = (content ?? "") + d.content;
      for (const t of d.tool_calls ?? []) {
        const acc = calls.get(t.index) ?? { id: "", type: "", name: "", arguments: "" };
        if (t.id) acc.id += t.id;
        if (t.type) acc.type = t.type;
        if (t.function?.name) acc.name += t.function.name;
        if (t.function?.arguments) acc.arguments += t.function.arguments;
        calls.set(t.index, acc);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  const indices = [...calls.keys()];
  result.stream = {
    content,
    tool_calls: [...calls.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => v),
    finish_reason: finish,
    indices,
    chunks,
  };

  // The SDK's accumulator, with its per-call "done" events.
  const runner = client.chat.completions.stream(request(c, {}));
  const done = [];
  runner.on("tool_calls.function.arguments.done", (e) => done.push({ name: e.name, arguments: e.arguments }));
  const final = await runner.finalChatCompletion();
  result.accumulated = {
    ...message(final.choices[0].message),
    finish_reason: final.choices[0].finish_reason,
    done_events: done,
  };
  out.push(result);
}
process.stdout.write(JSON.stringify(out));
