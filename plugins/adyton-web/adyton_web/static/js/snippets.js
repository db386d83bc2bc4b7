// "Copy as curl / Python / JavaScript": a working call for the current
// settings. The key is never written out: each snippet reads it from the
// ADYTON_API_KEY environment variable.

export function snippet(lang, origin, body) {
  const json = JSON.stringify(body, null, 2);
  if (lang === "python") {
    const { model, messages, stream, stream_options: _, ...rest } = body;
    const args = [`    model=${py(model)},`, `    messages=${py(messages, 4)},`];
    const extra = {};
    for (const [k, v] of Object.entries(rest)) {
      if (["temperature", "top_p", "max_tokens", "seed", "response_format"].includes(k)) {
        args.push(`    ${k}=${py(v, 4)},`);
      } else {
        extra[k] = v;
      }
    }
    if (Object.keys(extra).length) args.push(`    extra_body=${py(extra, 4)},`);
    return [
      "# pip install openai",
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${py(origin + "/v1")}, api_key=os.environ["ADYTON_API_KEY"])`,
      "response = client.chat.completions.create(",
      ...args,
      ")",
      "print(response.choices[0].message.content)",
    ].join("\n");
  }
  if (lang === "js") {
    return [
      "// node >= 18, as an ES module (e.g. call.mjs)",
      `const response = await fetch(${JSON.stringify(origin + "/v1/chat/completions")}, {`,
      "  method: \"POST\",",
      "  headers: {",
      "    \"Authorization\": `Bearer ${process.env.ADYTON_API_KEY}`,",
      "    \"Content-Type\": \"application/json\",",
      "  },",
      `  body: JSON.stringify(${indent(json, 2)}),`,
      "});",
      "const data = await response.json();",
      "if (!response.ok) {",
      "  console.error(data.error);",
      "  process.exit(1);",
      "}",
      "console.log(data.choices[0].message.content);",
    ].join("\n");
  }
  // curl: single-quoted body; a ' inside it is closed, escaped and reopened
  return [
    `curl -sS ${origin}/v1/chat/completions \\`,
    "  -H \"Authorization: Bearer $ADYTON_API_KEY\" \\",
    "  -H 'Content-Type: application/json' \\",
    `  -d '${json.replace(/'/g, "'\\''")}'`,
  ].join("\n");
}

function indent(text, n) {
  return text.split("\n").join("\n" + " ".repeat(n));
}

/** A Python literal for a JSON value. */
function py(value, level = 0) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  const pad = " ".repeat(level + 4);
  const end = " ".repeat(level);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return "[\n" + value.map((v) => pad + py(v, level + 4) + ",").join("\n") + "\n" + end + "]";
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return "{\n" + entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${py(v, level + 4)},`).join("\n") + "\n" + end + "}";
}
