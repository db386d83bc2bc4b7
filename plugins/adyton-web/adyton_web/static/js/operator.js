// Operator: accounts through the admin API (adyton-limits) and the live
// server view from /metrics, /-/models and /-/plugins, all with the admin key.

import { call, session } from "./api.js";
import { $, h, number } from "./dom.js";
import { barChart } from "./chart.js";
import { parseMetrics, sumBy, histogram } from "./prom.js";

const PAGE = 10;
const LIVE_EVERY_MS = 2000;

let offset = 0;
let total = 0;
let query = "";
let tiers = [];
let timer = null;
let searchTimer = null;
let visible = false;

export function initOperator(onAdminKey) {
  $("op-signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("op-admin-key").value.trim();
    $("op-signin-error").textContent = "";
    try {
      await checkAdminKey(key);
    } catch (err) {
      $("op-signin-error").textContent = err.message;
      return;
    }
    $("op-admin-key").value = "";
    onAdminKey(key);
  });
  $("op-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { query = $("op-search").value.trim(); offset = 0; loadAccounts(); }, 250);
  });
  $("op-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadAccounts(); });
  $("op-next").addEventListener("click", () => { if (offset + PAGE < total) { offset += PAGE; loadAccounts(); } });
  $("op-create").addEventListener("submit", createAccount);
}

/** Throws with a readable message unless `key` is the admin key. */
export async function checkAdminKey(key) {
  const response = await fetch("/admin/accounts?limit=1", {
    headers: { Authorization: `Bearer ${key}` }, credentials: "omit", cache: "no-store",
  });
  if (response.status === 404) throw new Error("This server has no admin API (adyton-limits is not installed).");
  if (response.status === 401 || response.status === 403) throw new Error("That is not the admin key.");
  if (!response.ok) throw new Error(`The admin API answered ${response.status}.`);
}

export function showOperator() {
  visible = true;
  const admin = Boolean(session.admin);
  $("op-signin").hidden = admin;
  $("op-body").hidden = !admin;
  if (!admin) { $("op-admin-key").focus(); return; }
  const ready = tiers.length ? Promise.resolve() : loadTiers();
  ready.then(loadAccounts, fail);
  live();
}

export function hideOperator() {
  visible = false;
  clearTimeout(timer);
  timer = null;
}

export function resetOperator() {
  hideOperator();
  offset = 0; total = 0; query = ""; tiers = [];
  $("op-search").value = "";
  $("op-accounts").tBodies[0].replaceChildren();
  $("op-live").replaceChildren();
  $("op-secret").hidden = true;
  $("op-secret-value").value = "";
  for (const id of ["op-error", "op-page-info", "op-updated", "op-signin-error"]) $(id).textContent = "";
}

function showSecret(label, text) {
  $("op-secret-label").textContent = label;
  $("op-secret-value").value = text;
  $("op-secret").hidden = false;
  $("op-secret-value").focus();
  $("op-secret-value").select();
}

function fail(err) {
  $("op-error").textContent = err.message;
}

async function loadAccounts() {
  try {
    const page = await call(`/admin/accounts?${new URLSearchParams({ q: query, limit: PAGE, offset })}`, { admin: true });
    total = page.total;
    if (offset >= total && total > 0) {  // the last page emptied (a search, a filter)
      offset = Math.floor((total - 1) / PAGE) * PAGE;
      return loadAccounts();
    }
    renderAccounts(page.accounts);
    const pages = Math.max(1, Math.ceil(total / PAGE));
    $("op-page-info").textContent =
      `Page ${Math.floor(offset / PAGE) + 1} of ${pages} · ${number(total)} account${total === 1 ? "" : "s"}` +
      (query ? ` matching “${query}”` : "");
    $("op-prev").disabled = offset === 0;
    $("op-next").disabled = offset + PAGE >= total;
    $("op-error").textContent = "";
  } catch (err) {
    fail(err);
  }
}

function tierSelect(account) {
  const choices = tiers.includes(account.tier) ? tiers : [...tiers, account.tier].sort((x, y) => x - y);
  const select = h("select", { "aria-label": `Tier of ${account.name || account.id}` },
    choices.map((t) => h("option", { value: t, selected: t === account.tier }, `Tier ${t}`)));
  select.addEventListener("change", () =>
    act(`/admin/accounts/${account.id}/tier`, { tier: Number(select.value) }));
  return select;
}

function renderAccounts(accounts) {
  const rows = accounts.map((a) => {
    const who = a.name || a.id;
    return h("tr", { "data-id": a.id },
      h("td", {}, h("code", {}, a.id)),
      h("td", {}, a.name || "–"),
      h("td", {}, `…${a.account_number_last4}`),
      h("td", {}, tierSelect(a)),
      h("td", {}, a.enabled ? "enabled" : "disabled"),
      h("td", {}, a.created_at.replace("T", " ").replace("+00:00", " UTC")),
      h("td", { class: "actions" },
        h("button", { type: "button", onclick: () => act(`/admin/accounts/${a.id}/${a.enabled ? "disable" : "enable"}`),
                      "aria-label": `${a.enabled ? "Disable" : "Enable"} ${who}` }, a.enabled ? "Disable" : "Enable"),
        h("button", { type: "button", onclick: () => rotate(a), "aria-label": `Rotate the key of ${who}` }, "Rotate key")));
  });
  $("op-accounts").tBodies[0].replaceChildren(...rows);
}

async function act(path, body) {
  try {
    await call(path, { method: "POST", body: body ?? {}, admin: true });
    await loadAccounts();
  } catch (err) {
    fail(err);
  }
}

async function rotate(account) {
  try {
    const { api_key: key } = await call(`/admin/accounts/${account.id}/rotate-key`, { method: "POST", body: {}, admin: true });
    showSecret(`New API key of ${account.name || account.id} (shown once)`, key);
  } catch (err) {
    fail(err);
  }
}

async function createAccount(event) {
  event.preventDefault();
  const name = $("op-create-name").value.trim();
  const tier = Number($("op-create-tier").value || 1);
  try {
    const made = await call("/admin/accounts", { method: "POST", body: { name, tier }, admin: true });
    $("op-create-name").value = "";
    showSecret(`Account ${made.name || made.id} (shown once)`,
               `account number: ${made.account_number}\nAPI key: ${made.api_key}`);
    // jump to the page holding the new account (accounts are listed oldest first)
    query = ""; $("op-search").value = "";
    const { total: n } = await call("/admin/accounts?limit=1", { admin: true });
    offset = Math.floor((n - 1) / PAGE) * PAGE;
    await loadAccounts();
  } catch (err) {
    fail(err);
  }
}

// -- live view -----------------------------------------------------------------

let slowAt = 0;
let models = [];
let plugins = [];

async function live() {
  if (!visible || !session.admin) return;
  try {
    const text = await call("/metrics", { admin: true, text: true });
    if (Date.now() - slowAt > 10000) {
      [models, plugins] = await Promise.all([
        call("/-/models", { admin: true }).then((r) => r.models),
        call("/-/plugins", { admin: true }).then((r) => r.plugins),
      ]);
      slowAt = Date.now();
    }
    renderLive(parseMetrics(text));
    $("op-updated").textContent = `· updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("op-updated").textContent = `· not updated: ${err.message}`;
  }
  if (visible) timer = setTimeout(live, LIVE_EVERY_MS);
}

/** The tier table (GET /admin/tiers): the choices for new accounts and tier changes. */
async function loadTiers() {
  const table = await call("/admin/tiers", { admin: true });
  tiers = Object.keys(table.tiers).map(Number).sort((x, y) => x - y);
  $("op-create-tier").replaceChildren(...tiers.map((t) =>
    h("option", { value: t, selected: t === table.default_tier }, `Tier ${t}`)));
}

function table(caption, rows, id) {
  return h("table", { id },
    h("caption", {}, caption),
    h("tbody", {}, rows.length ? rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))
      : h("tr", {}, h("td", { colspan: 2 }, "none yet"))));
}

function histogramChart(samples, name, title, unit, digits) {
  const hist = histogram(samples, name);
  const points = hist.buckets.map((b) => ({ label: b.le === Infinity ? "more" : `≤${b.le}`, value: b.count }));
  const mean = hist.count ? (hist.sum / hist.count).toFixed(digits) : "–";
  return h("div", { class: "card" },
    h("h3", {}, `${title}: mean ${mean}${unit} over ${number(hist.count)}`),
    barChart(points, { title, width: 460, height: 150 }));
}

function renderLive(samples) {
  const waiting = sumBy(samples, "adyton_queue_waiting", "backend");
  const running = sumBy(samples, "adyton_queue_running", "backend");
  const queueRows = Object.keys({ ...waiting, ...running }).map((b) =>
    [b, `${number(running[b] || 0)} running, ${number(waiting[b] || 0)} waiting`]);
  const outcomes = Object.entries(sumBy(samples, "adyton_requests_total", "outcome")).map(([k, v]) => [k, number(v)]);
  const refused = Object.entries(sumBy(samples, "adyton_rejections_total", "reason")).map(([k, v]) => [k, number(v)]);
  const tokens = [["prompt", number(sumBy(samples, "adyton_prompt_tokens_total"))],
                  ["completion", number(sumBy(samples, "adyton_completion_tokens_total"))]];
  $("op-live").replaceChildren(
    table("Queue", queueRows, "op-queue"),
    table("Requests by outcome", outcomes, "op-outcomes"),
    table("Refused by reason", refused, "op-refused"),
    table("Tokens", tokens, "op-tokens"),
    histogramChart(samples, "adyton_time_to_first_token_seconds", "Time to first token", " s", 3),
    histogramChart(samples, "adyton_decode_tokens_per_second", "Decode speed", " tokens/s", 1),
    table("Models", models.map((m) => [m.id, `${m.backend}${m.loaded ? " · loaded" : ""}`]), "op-models"),
    table("Plugins", plugins.map((p) => [p.name, p.distribution ? `${p.distribution} ${p.version || ""}` : ""]),
          "op-plugins"),
  );
}
