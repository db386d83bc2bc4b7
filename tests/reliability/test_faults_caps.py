"""Per-tier request caps (issue 15, item 10): one request cannot hold the
engine for minutes. With the default tier table a tier-1 account gets at most
4 choices of at most 2048 tokens; a request above that is refused with 400 in
its wire format's shape before any quota is used, and a request that names
no max_tokens (or lets the server fit it: Axiom) is capped instead."""

from __future__ import annotations

import httpx
from faults_helpers import ledger, limits_app, new_account, serving, tier

from adyton.testing import ScriptedBackend

CHAT = [{"role": "user", "content": "hi"}]


def test_default_tier_caps_refuse_before_any_quota_is_used(tmp_path):
    backend = ScriptedBackend(["a"] * 5, context_length=32_768)
    app = limits_app(tmp_path / "home", backend)  # the default tier table
    acct = new_account(app)
    db = tmp_path / "home" / "adyton.sqlite3"  # the kernel database
    auth = {"Authorization": f"Bearer {acct.api_key}"}
    with serving(app) as server:
        url = server.base_url + "/v1/chat/completions"
        r = httpx.post(url, json={"messages": CHAT, "n": 16}, headers=auth, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == "n"
        assert err["code"] == "n_above_tier_limit" and "at most 4" in err["message"]

        r = httpx.post(url, json={"messages": CHAT, "max_tokens": 5000}, headers=auth, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "max_tokens" and err["code"] == "max_tokens_above_tier_limit"
        assert "at most 2048" in err["message"]
        assert ledger(db, acct.account.id) == []  # nothing was reserved or counted

        # no max_tokens: capped at 2048 per choice (not the 32k context), n=4 allowed
        r = httpx.post(url, json={"messages": CHAT, "n": 4}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert int(r.headers["x-ratelimit-remaining-requests"]) == 59  # the refusals cost nothing
    [row] = ledger(db, acct.account.id)
    prompt = row["prompt_tokens"]
    assert row["reserved_tokens"] == prompt + 4 * 2048


def test_axiom_request_is_capped_not_refused(tmp_path):
    backend = ScriptedBackend(["a"] * 5, context_length=8192)
    app = limits_app(tmp_path / "home", backend, tiers={1: tier(max_tokens_per_request=100)},
                     settings={"axiom": {"max_tokens": 2048}})
    acct = new_account(app)
    db = tmp_path / "home" / "adyton.sqlite3"  # the kernel database
    with serving(app) as server:
        r = httpx.post(server.base_url + "/api/chat", timeout=30, json={
            "model": "scripted-model", "sessionId": acct.account_number, "system_prompt": "", "messages": CHAT})
        assert r.status_code == 200, r.text
    [row] = ledger(db, acct.account.id)
    assert row["reserved_tokens"] == row["prompt_tokens"] + 100
