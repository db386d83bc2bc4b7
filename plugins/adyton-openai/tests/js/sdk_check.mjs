// The official OpenAI JavaScript SDK against an adyton server.
// Usage: ADYTON_BASE_URL=http://127.0.0.1:PORT node sdk_check.mjs
// Prints one JSON object with what it saw; the Python test checks it.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.ADYTON_BASE_URL + "/v1",
  apiKey: "sk-js-test",
  maxRetries: 0,
});
const messages = [{ role: "user", content: "Say hello in one sentence." }];
const out = {};

const chat = await client.chat.completions.create({ model: "", messages });
out.chat = {
  object: chat.object,
  content: chat.choices[0].message.content,
  finish_reason: chat.choices[0].finish_reason,
  usage: chat.usage,
};

const stream = await client.chat.completions.create({
  model: "", messages, stream: true, stream_options: { include_usage: true },
});
let text = "";
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    text += choice.delta?.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
out.stream = { text, finish_reason: finish, usage, chunks };

try {
  await client.chat.completions.create({ model: "no-such-model", messages });
  out.error = { raised: false };
} catch (err) {
  out.error = {
    raised: true,
    notFound: err instanceof OpenAI.NotFoundError,
    status: err.status,
    code: err.code,
    type: err.type,
  };
}

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

console.log(JSON.stringify(out));
