// The Vercel AI SDK (npm "ai" + "@ai-sdk/openai") against adyton: its default
// OpenAI model (the provider called as a function) speaks /v1/responses.
// Usage: ADYTON_BASE_URL=http://127.0.0.1:PORT node ai_sdk_check.mjs text|tools
// Prints one JSON line with what the SDK made of the answers.
import { createOpenAI } from "@ai-sdk/openai";
import { embedMany, generateText, streamText, tool } from "ai";
import { z } from "zod";

const openai = createOpenAI({ baseURL: process.env.ADYTON_BASE_URL + "/v1", apiKey: "sk-a" });
const model = openai("scripted-model"); // the default: the Responses API
const out = {};

if (process.argv[2] === "tools") {
  const r = await generateText({
    model,
    prompt: "weather in Paris?",
    tools: {
      get_weather: tool({
        description: "Weather in a city",
        inputSchema: z.object({ city: z.string() }),
      }),
    },
  });
  out.tools = {
    text: r.text,
    finishReason: r.finishReason,
    calls: r.toolCalls.map((c) => ({ name: c.toolName, input: c.input, id: c.toolCallId })),
  };
} else {
  const r = await generateText({ model, system: "Be brief.", prompt: "hi" });
  out.text = { text: r.text, finishReason: r.finishReason, id: r.response.id, usage: r.usage };
  const s = streamText({ model, prompt: "hi" });
  let text = "";
  for await (const delta of s.textStream) text += delta;
  out.stream = { text, finishReason: await s.finishReason, usage: await s.usage };
  const e = await embedMany({ model: openai.textEmbeddingModel("scripted-model"), values: ["red apple", "red apple", "blue sky"] });
  out.embed = {
    n: e.embeddings.length,
    dims: e.embeddings[0].length,
    same: JSON.stringify(e.embeddings[0]) === JSON.stringify(e.embeddings[1]),
    differ: JSON.stringify(e.embeddings[0]) !== JSON.stringify(e.embeddings[2]),
    tokens: e.usage.tokens,
  };
}
console.log(JSON.stringify(out));
