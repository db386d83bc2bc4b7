// The console's shell: sign in / out, and one page at a time (#playground,
// #account, #operator). Nothing is shown or fetched before a credential is
// given; the route is in the URL's fragment, the credential never is.

import { ApiError, session } from "./api.js";
import { $ } from "./dom.js";
import { initPlayground, showPlayground, resetPlayground } from "./playground.js";
import { initAccount, showAccount, resetAccount } from "./account.js";
import { initOperator, showOperator, hideOperator, resetOperator, checkAdminKey } from "./operator.js";

const PAGES = {
  playground: { show: showPlayground },
  account: { show: showAccount },
  operator: { show: showOperator, hide: hideOperator },
};

let current = null;

function route() {
  if (!session.signedIn) return showSignin();
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = describeSession();
  let name = location.hash.replace(/^#/, "");
  if (!(name in PAGES)) name = session.key ? "playground" : "operator";
  if (current && current !== name && PAGES[current].hide) PAGES[current].hide();
  current = name;
  for (const page of Object.keys(PAGES)) $(`page-${page}`).hidden = page !== name;
  for (const link of $("nav").querySelectorAll("a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${$(`page-${name}`).querySelector("h1").textContent} · adyton console`;
  PAGES[name].show();
}

function describeSession() {
  const parts = [];
  if (session.key) parts.push(/^\d+$/.test(session.key) ? `account …${session.key.slice(-4)}` : `key ${session.key.slice(0, 6)}…`);
  if (session.admin) parts.push("admin");
  return `Signed in: ${parts.join(" + ")}`;
}

function showSignin() {
  for (const page of Object.keys(PAGES)) $(`page-${page}`).hidden = true;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  document.title = "Sign in · adyton console";
  $("signin-key").focus();
}

/** Is `key` a credential this server accepts? GET /v1/account with it
 *  (adyton-limits); a server without that API (404) has no accounts to check. */
async function checkKey(key) {
  const response = await fetch("/v1/account", {
    headers: { Authorization: `Bearer ${key}` }, credentials: "omit", cache: "no-store",
  });
  if (response.ok || response.status === 404) return;
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  throw new ApiError(response.status, body, `the server answered ${response.status}`);
}

async function signIn(event) {
  event.preventDefault();
  const key = $("signin-key").value.trim();
  const admin = $("signin-admin").value.trim();
  const error = $("signin-error");
  error.textContent = "";
  if (!key && !admin) { error.textContent = "Enter an API key, an account number or the admin key."; return; }
  $("signin-submit").disabled = true;
  try {
    if (key) {
      try { await checkKey(key); } catch (err) { throw new Error(`API key or account number: ${err.message}`); }
    }
    if (admin) {
      try { await checkAdminKey(admin); } catch (err) { throw new Error(`Admin key: ${err.message}`); }
    }
  } catch (err) {
    error.textContent = err.message;
    return;
  } finally {
    $("signin-submit").disabled = false;
  }
  session.set(key, admin);
  $("signin-key").value = "";
  $("signin-admin").value = "";
  route();
}

function signOut() {
  session.clear();
  if (current && PAGES[current].hide) PAGES[current].hide();
  current = null;
  resetPlayground();
  resetAccount();
  resetOperator();
  history.replaceState(null, "", location.pathname);
  route();
}

initPlayground();
initAccount();
initOperator((key) => { sessionStorage.setItem("adyton.admin", key); route(); });
$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
window.addEventListener("adyton:session", () => { $("who").textContent = describeSession(); });
route();
