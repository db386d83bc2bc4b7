// Tool calling with the official OpenAI JavaScript SDK against an adyton server.
// Usage: ADYTON_BASE_URL=http://127.0.0.1:PORT node tools_check.mjs
// Prints one JSON object with what it saw; the Python test checks it.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.ADYTON_BASE_URL + "/v1",
  apiKey: "sk-js-test",
  maxRetries: 0,
});
const messages = [{ role: "user", content: "What is 2 plus 40?" }];
const tools = [{
  type: "function",
  function: {
    name: "add",
    description: "Add two integers",
    parameters: { type: "object", properties: { a: { type: "integer" }, b: { type: "integer" } }, required: ["a", "b"] },
  },
}];
const toolChoice = { type: "function", function: { name: "add" } };
const out = {};

const chat = await client.chat.completions.create({ model: "", messages, tools, tool_choice: toolChoice, max_tokens: 200, temperature: 0 });
out.chat = {
  finish_reason: chat.choices[0].finish_reason,
  tool_calls: chat.choices[0].message.tool_calls,
  content: chat.choices[0].message.content,
};

// the SDK's own stream assembly (ChatCompletionStream)
const stream = client.chat.completions.stream({ model: "", messages, tools, tool_choice: toolChoice, max_tokens: 200, temperature: 0 });
let argumentDeltas = 0;
stream.on("tool_calls.function.arguments.delta", () => { argumentDeltas += 1; });
const final = await stream.finalChatCompletion();
out.stream = {
  finish_reason: final.choices[0].finish_reason,
  tool_calls: final.choices[0].message.tool_calls,
  argument_deltas: argumentDeltas,
};

// the call and its result back in the history
const followUp = await client.chat.completions.create({
  model: "", tools, max_tokens: 5,
  messages: [...messages, final.choices[0].message,
             { role: "tool", tool_call_id: final.choices[0].message.tool_calls[0].id, content: "42" }],
});
out.follow_up = { finish_reason: followUp.choices[0].finish_reason };

console.log(JSON.stringify(out));
