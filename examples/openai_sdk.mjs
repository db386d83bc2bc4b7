// The official OpenAI JavaScript SDK against a local adyton server: a chat,
// a stream, and JSON-schema output.
//
//   cd examples && npm ci && ADYTON_API_KEY=sk-... node openai_sdk.mjs
//
// (`adyton accounts create` prints a key; without adyton-limits any key works.)
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: (process.env.ADYTON_URL ?? "http://127.0.0.1:8756") + "/v1",
  apiKey: process.env.ADYTON_API_KEY ?? "no-key",
});
const model = process.env.ADYTON_MODEL ?? ""; // "" = the model loaded in the server

// 1. a chat completion
const resp = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Say hello in one sentence." }],
  max_tokens: 40,
  temperature: 0,
});
console.log("chat:", resp.choices[0].message.content);

// 2. streaming, with the usage chunk at the end
const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Count from one to five." }],
  max_tokens: 40,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
console.log("stream:", text);
console.log("stream usage:", usage?.completion_tokens, "completion tokens");

// 3. JSON-schema output, enforced token by token (adyton-guided)
const person = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Invent a person and give their name and age." }],
  max_tokens: 60,
  response_format: {
    type: "json_schema",
    json_schema: {
      name: "person",
      strict: true,
      schema: {
        type: "object",
        properties: { name: { type: "string", maxLength: 30 }, age: { type: "integer", minimum: 0, maximum: 120 } },
        required: ["name", "age"],
        additionalProperties: false,
      },
    },
  },
});
console.log("json:", JSON.stringify(JSON.parse(person.choices[0].message.content)));
