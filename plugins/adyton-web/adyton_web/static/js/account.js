// My account: GET /v1/account and POST /v1/account/rotate-key (adyton-limits).

import { call, session } from "./api.js";
import { $, h, gauge, number } from "./dom.js";
import { barChart } from "./chart.js";

let signedInWith = null;

export function initAccount() {
  $("acct-rotate").addEventListener("click", () => confirmRotate(true));
  $("acct-rotate-cancel").addEventListener("click", () => confirmRotate(false));
  $("acct-rotate-confirm").addEventListener("click", rotate);
}

export function resetAccount() {
  $("acct-body").replaceChildren();
  $("acct-error").textContent = "";
  $("acct-newkey").hidden = true;
  $("acct-newkey-value").value = "";
  confirmRotate(false);
}

function confirmRotate(asking) {
  $("acct-rotate").hidden = asking;
  $("acct-rotate-confirm").hidden = !asking;
  $("acct-rotate-cancel").hidden = !asking;
  if (asking) $("acct-rotate-confirm").focus();
}

export async function showAccount() {
  const box = $("acct-body");
  $("acct-error").textContent = "";
  if (!session.key) {
    box.replaceChildren(h("p", {}, "Sign in with an API key or account number to see your account."));
    return;
  }
  let a;
  try {
    a = await call("/v1/account");
  } catch (err) {
    box.replaceChildren();
    $("acct-error").textContent = err.status === 404
      ? "This server has no account API (adyton-limits is not installed)."
      : `Could not load your account: ${err.message}`;
    return;
  }
  signedInWith = a.signed_in_with;
  const w = a.windows || {};
  const win = (name) => w[name] || { used: 0, limit: 0, remaining: 0 };
  const limitsRows = Object.entries(a.limits).map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k.replaceAll("_", " ")), h("td", {}, v ? number(v) : "no limit")));
  const minute = ["requests/minute", "tokens/minute"].map((name) =>
    h("li", {}, `${name}: ${number(win(name).remaining)} left of ${number(win(name).limit)}`,
      w[name] && w[name].resets_in_s !== undefined ? ` (resets in ${w[name].resets_in_s} s)` : ""));
  const up = a.upgrade || {};
  let upgrade;
  if (up.next_tier) {
    const needs = [up.requests_per_day_needed && `${number(up.requests_per_day_needed)} requests`,
                   up.tokens_per_day_needed && `${number(up.tokens_per_day_needed)} tokens`].filter(Boolean);
    upgrade = h("div", { id: "acct-upgrade" },
      gauge(`Days counting toward tier ${up.next_tier}`, up.days_counted, up.days_needed),
      h("p", { class: "hint" }, `A day counts when it uses at least ${needs.join(" or ")} ` +
        `(${Math.round(up.share * 100)}% of the daily quota), since ${up.since}.`));
  } else {
    upgrade = h("p", { id: "acct-upgrade" }, up.reason ? `No automatic upgrade: ${up.reason}.` : "No automatic upgrade.");
  }
  const history = (a.history || []).map((d) => ({ label: d.day.slice(5), value: d.requests }));
  const tokens = (a.history || []).map((d) => ({ label: d.day.slice(5), value: d.total_tokens }));
  box.replaceChildren(
    h("div", { class: "card" },
      h("h2", {}, `Tier ${a.tier}`),
      h("p", {}, `${a.name || a.id} · account …${a.account_number_last4} · `,
        a.enabled ? "enabled" : "disabled", ` · signed in with ${a.signed_in_with === "account_number" ? "the account number" : "an API key"}`),
      h("table", { class: "limits" }, h("caption", {}, "Limits of your tier"), h("tbody", {}, limitsRows))),
    h("div", { class: "card", id: "acct-today" },
      h("h2", {}, `Today (${a.today.day}, UTC)`),
      gauge("Requests today", win("requests/day").used, win("requests/day").limit),
      gauge("Tokens today", win("tokens/day").used, win("tokens/day").limit),
      h("p", { class: "hint", id: "acct-settled" },
        `Settled: ${number(a.today.requests)} request${a.today.requests === 1 ? "" : "s"}, ` +
        `${number(a.today.total_tokens)} tokens ` +
        `(${number(a.today.prompt_tokens)} prompt + ${number(a.today.completion_tokens)} completion).`),
      h("h3", {}, "This minute"),
      h("ul", { id: "acct-minute" }, minute,
        h("li", {}, `in flight: ${number(win("concurrent requests").used)} of ${number(win("concurrent requests").limit)}`))),
    h("div", { class: "card" }, h("h2", {}, "Next tier"), upgrade),
    h("div", { class: "card wide" },
      h("h2", {}, "Last 30 days"),
      h("div", { class: "charts" },
        h("figure", {}, h("figcaption", {}, "Requests per day"),
          barChart(history, { title: "Requests per day, last 30 days" })),
        h("figure", {}, h("figcaption", {}, "Tokens per day"),
          barChart(tokens, { title: "Tokens per day, last 30 days", unit: " tokens" })))),
  );
}

async function rotate() {
  confirmRotate(false);
  $("acct-error").textContent = "";
  try {
    const { api_key: key } = await call("/v1/account/rotate-key", { method: "POST" });
    // keep working in this tab: the old key no longer does
    if (signedInWith !== "account_number") {
      session.setKey(key);
      window.dispatchEvent(new Event("adyton:session"));
    }
    $("acct-newkey-value").value = key;
    $("acct-newkey").hidden = false;
    $("acct-newkey-value").focus();
    $("acct-newkey-value").select();
  } catch (err) {
    $("acct-error").textContent = `Could not rotate the key: ${err.message}`;
  }
}
