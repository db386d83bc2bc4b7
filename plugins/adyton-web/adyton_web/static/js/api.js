// Calls to the server's documented HTTP APIs, with the credential in a header.
// The credentials live in this tab's sessionStorage only: never in a URL, a
// cookie or a log line.

const KEY = "adyton.key";
const ADMIN = "adyton.admin";

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  get admin() { return sessionStorage.getItem(ADMIN) || ""; },
  set(key, admin) {
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    if (admin) sessionStorage.setItem(ADMIN, admin); else sessionStorage.removeItem(ADMIN);
  },
  setKey(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(ADMIN); },
  get signedIn() { return Boolean(this.key || this.admin); },
};

/** An HTTP error with the server's own message. */
export class ApiError extends Error {
  constructor(status, body, fallback) {
    const err = body && typeof body === "object" ? (body.error || body) : null;
    const message = (err && (err.message || err.detail)) || fallback || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = err && err.code;
  }
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  return new ApiError(response.status, body, `${response.status} ${response.statusText}`);
}

/** fetch with the user's key (or the admin key with {admin: true}). */
export async function call(path, { method = "GET", body, admin = false, signal, text = false } = {}) {
  const secret = admin ? session.admin : session.key;
  const headers = {};
  if (secret) headers["Authorization"] = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, credentials: "omit", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return text ? response.text() : response.json();
}

/**
 * POST a streaming chat completion; calls onEvent(parsed chunk) for each
 * server-sent event and resolves with the response headers when [DONE].
 */
export async function streamChat(body, { onEvent, signal }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", credentials: "omit", cache: "no-store", signal,
    headers: { "Authorization": `Bearer ${session.key}`, "Content-Type": "application/json",
               "Accept": "text/event-stream" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return response.headers;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(0, event, "the stream ended with an error");
      onEvent(event);
    }
  }
  return response.headers;
}
