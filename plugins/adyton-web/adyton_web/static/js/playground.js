// Playground: a streaming chat on /v1/chat/completions, with guided JSON /
// regex output (adyton-guided) and "copy as curl / Python / JS".

import { call, streamChat } from "./api.js";
import { $, h, number } from "./dom.js";
import { snippet } from "./snippets.js";
import { checkSchema } from "./schema.js";

const EXAMPLE_SCHEMA = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 40 },
    country: { type: "string", maxLength: 40 },
    population: { type: "integer", minimum: 0, maximum: 100000000 },
  },
  required: ["city", "country", "population"],
  additionalProperties: false,
};
const EXAMPLE_REGEX = "(Yes|No), because [a-z ,]{10,60}\\.";

let conversation = [];   // [{role, content}] sent with the next request
let controller = null;   // the running request's AbortController
let modelsLoaded = false;

export function initPlayground() {
  $("pg-schema").value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  $("pg-regex").value = EXAMPLE_REGEX;
  $("pg-mode").addEventListener("change", () => { showMode(); updateSnippet(); });
  $("pg-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("pg-form").addEventListener("submit", (event) => event.preventDefault());
  $("pg-form").addEventListener("input", updateSnippet);
  $("pg-message").addEventListener("input", updateSnippet);
  $("pg-send").addEventListener("click", send);
  $("pg-stop").addEventListener("click", () => controller && controller.abort());
  $("pg-clear").addEventListener("click", () => {
    conversation = [];
    $("pg-log").replaceChildren();
    $("pg-stats").textContent = "";
    $("pg-check").textContent = "";
    updateSnippet();
  });
  $("pg-copy").addEventListener("click", copySnippet);
  $("pg-lang").addEventListener("change", updateSnippet);
  showMode();
}

export async function showPlayground() {
  if (!modelsLoaded) await loadModels();
  updateSnippet();
  $("pg-message").focus();
}

export function resetPlayground() {
  if (controller) controller.abort();
  conversation = [];
  modelsLoaded = false;
  $("pg-log").replaceChildren();
  $("pg-model").replaceChildren();
  for (const id of ["pg-stats", "pg-check", "pg-error", "pg-snippet"]) $(id).textContent = "";
  $("pg-snippet").value = "";
}

async function loadModels() {
  const select = $("pg-model");
  try {
    const { data } = await call("/v1/models");
    select.replaceChildren(...data.map((m) => h("option", { value: m.id }, m.id)));
    modelsLoaded = true;
    $("pg-error").textContent = "";
  } catch (err) {
    $("pg-error").textContent = `Could not list the models: ${err.message}`;
  }
}

function showMode() {
  const mode = $("pg-mode").value;
  $("pg-schema-box").hidden = mode !== "json_schema";
  $("pg-regex-box").hidden = mode !== "regex";
}

/** The request body for the current settings and `messages`. */
function requestBody(messages) {
  const body = { model: $("pg-model").value, messages, stream: true, stream_options: { include_usage: true } };
  const system = $("pg-system").value.trim();
  if (system) body.messages = [{ role: "system", content: system }, ...messages];
  const num = (id, parse) => {
    const raw = $(id).value.trim();
    if (raw === "") return undefined;
    const value = parse(raw);
    if (!Number.isFinite(value)) throw new Error(`${$(id).labels[0].textContent} must be a number`);
    return value;
  };
  for (const [key, id, parse] of [["temperature", "pg-temperature", Number], ["top_p", "pg-top-p", Number],
                                  ["max_tokens", "pg-max-tokens", (v) => parseInt(v, 10)],
                                  ["seed", "pg-seed", (v) => parseInt(v, 10)]]) {
    const value = num(id, parse);
    if (value !== undefined) body[key] = value;
  }
  const mode = $("pg-mode").value;
  if (mode === "json_schema") {
    let schema;
    try { schema = JSON.parse($("pg-schema").value); } catch (err) {
      throw new Error(`The JSON schema is not valid JSON: ${err.message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "playground", schema, strict: true } };
  } else if (mode === "regex") {
    const pattern = $("pg-regex").value;
    if (!pattern) throw new Error("Enter a regex");
    body.policy = { sampling: { method: "guided-generation" }, constraints: { regex_pattern: pattern } };
  }
  return body;
}

function updateSnippet() {
  const text = $("pg-message").value.trim() || "Hello!";
  try {
    const body = requestBody([...conversation, { role: "user", content: text }]);
    delete body.stream;
    delete body.stream_options;
    $("pg-snippet").value = snippet($("pg-lang").value, location.origin, body);
  } catch (err) {
    $("pg-snippet").value = `# ${err.message}`;
  }
}

async function copySnippet() {
  updateSnippet();
  const text = $("pg-snippet").value;
  try {
    await navigator.clipboard.writeText(text);
    $("pg-check").textContent = "Copied the call to the clipboard.";
  } catch {
    $("pg-snippet").select();
    $("pg-check").textContent = "Select and copy the call below (the clipboard is not available here).";
  }
}

function addTurn(role, text) {
  const body = h("div", { class: "content" }, text);
  const item = h("li", { class: `turn ${role}` }, h("span", { class: "role" }, role), body);
  $("pg-log").append(item);
  item.scrollIntoView({ block: "end" });
  return body;
}

async function send() {
  if (controller) return;
  const text = $("pg-message").value.trim();
  $("pg-error").textContent = "";
  $("pg-check").textContent = "";
  if (!text) { $("pg-error").textContent = "Write a message first."; return; }
  let body;
  try { body = requestBody([...conversation, { role: "user", content: text }]); } catch (err) {
    $("pg-error").textContent = err.message;
    return;
  }
  const mode = $("pg-mode").value;
  conversation.push({ role: "user", content: text });
  addTurn("user", text);
  $("pg-message").value = "";
  const out = addTurn("assistant", "");
  out.setAttribute("aria-busy", "true");
  controller = new AbortController();
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let usage = null;
  let finish = null;
  let answer = "";
  const stats = $("pg-stats");
  const showStats = () => {
    const now = performance.now();
    const parts = [];
    if (first !== null) parts.push(`first token after ${((first - started) / 1000).toFixed(2)} s`);
    const tokens = usage ? usage.completion_tokens : chunks;
    if (first !== null && tokens > 1 && now > first) {
      parts.push(`${((tokens - 1) / ((now - first) / 1000)).toFixed(1)} tokens/s`);
    }
    if (usage) {
      parts.push(`usage: ${number(usage.prompt_tokens)} prompt + ${number(usage.completion_tokens)} completion = ${number(usage.total_tokens)} tokens`);
    } else {
      parts.push(`${chunks} tokens so far`);
    }
    if (finish) parts.push(`finish: ${finish}`);
    stats.textContent = parts.join(" · ");
  };
  try {
    const headers = await streamChat(body, {
      signal: controller.signal,
      onEvent(event) {
        if (event.usage) usage = event.usage;
        for (const choice of event.choices || []) {
          const delta = choice.delta && choice.delta.content;
          if (delta) {
            if (first === null) first = performance.now();
            chunks += 1;
            answer += delta;
            out.append(document.createTextNode(delta));
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        showStats();
      },
    });
    showStats();
    conversation.push({ role: "assistant", content: answer });
    const guided = headers.get("x-adyton-guided");
    if (mode === "json_schema") checkJson(answer, body.response_format.json_schema.schema, guided, finish);
    if (mode === "regex") checkRegex(answer, body.policy.constraints.regex_pattern, guided, finish);
  } catch (err) {
    if (err.name === "AbortError") {
      $("pg-check").textContent = "Stopped.";
      if (answer) conversation.push({ role: "assistant", content: answer });
    } else {
      conversation.pop();  // the turn was not answered: do not send it again
      $("pg-error").textContent = err.message;
    }
  } finally {
    out.removeAttribute("aria-busy");
    controller = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
    updateSnippet();
    $("pg-message").focus();
  }
}

function checkJson(text, schema, guided, finish) {
  const check = $("pg-check");
  let value;
  try { value = JSON.parse(text); } catch (err) {
    check.textContent = `Not valid JSON (finish: ${finish}): ${err.message}` +
      (finish === "length" ? " — the answer was cut by max tokens: raise it, or bound the schema's strings." : "");
    check.className = "check bad";
    return;
  }
  const problems = checkSchema(value, schema);
  const pre = h("pre", { class: "json", "aria-label": "The answer as parsed JSON" }, JSON.stringify(value, null, 2));
  check.replaceChildren(
    problems.length ? `Valid JSON, but: ${problems.join("; ")}`
      : `Valid JSON that matches the schema${guided ? ` (guided decoding: ${guided})` : ""}.`,
    pre);
  check.className = problems.length ? "check bad" : "check ok";
}

function checkRegex(text, pattern, guided, finish) {
  const check = $("pg-check");
  let ok = false;
  try { ok = new RegExp(`^(?:${pattern})$`, "u").test(text); } catch { ok = false; }
  check.textContent = ok ? `The answer matches the regex${guided ? ` (guided decoding: ${guided})` : ""}.`
    : `The answer does not match the regex (finish: ${finish}).`;
  check.className = ok ? "check ok" : "check bad";
}
