// The openai npm package reads a streamed chat completion that waited for its model's load, with
// the switch's loading progress in it.
//
//   node progress.mjs PACKAGE BASE_URL MODEL MODE
//
// MODE "iterate": the stream read chunk by chunk (as Roo Code does); "final": the SDK's own
// accumulator (chat.completions.stream(...).finalChatCompletion()). Prints one JSON object:
// content, reasoning, and the ids, created and model values the chunks carried.

const [pkg, baseURL, model, mode] = process.argv.slice(2);
const { default: OpenAI } = await import(pkg);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const body = { model, messages: [{ role: "user", content: "hello" }], stream: true };

const out = { content: "", reasoning: "", ids: [], created: [], models: [], chunks: 0 };
if (mode === "iterate") {
  const stream = await client.chat.completions.create(body);
  for await (const chunk of stream) {
    out.chunks += 1;
    out.ids.push(chunk.id);
    out.created.push(chunk.created);
    out.models.push(chunk.model);
    const delta = chunk.choices[0]?.delta ?? {};
    out.content += delta.content ?? "";
    out.reasoning += delta.reasoning_content ?? "";
  }
} else {
  const runner = client.chat.completions.stream(body);
  runner.on("chunk", (chunk) => {
    out.chunks += 1;
    out.ids.push(chunk.id);
    out.created.push(chunk.created);
    out.models.push(chunk.model);
  });
  const done = await runner.finalChatCompletion();
  out.content = done.choices[0].message.content ?? "";
  out.reasoning = done.choices[0].message.reasoning_content ?? "";
}
console.log(JSON.stringify(out));
