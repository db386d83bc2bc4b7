"""The Axiom route with adyton-limits installed: account numbers must belong
to enabled accounts, their limits apply (429 + Retry-After), and the same
account's usage through the OpenAI routes (API key) and the Axiom route
(account number) lands in one set of counters and one ledger."""

from __future__ import annotations

import time

import httpx
import pytest
from axiom_helpers import ACCOUNT, chat_body

from adyton.testing import ScriptedBackend

adyton_limits = pytest.importorskip("adyton_limits")


def tier(rpm: int = 100, tpm: int = 1_000_000, rpd: int = 10_000, tpd: int = 10_000_000, conc: int = 8) -> dict:
    return {"requests_per_minute": rpm, "tokens_per_minute": tpm, "requests_per_day": rpd,
            "tokens_per_day": tpd, "concurrent_requests": conc}


@pytest.fixture
def limited(serve, tmp_path):
    """limited(tier_1=..., extra_plugins=(), backend=None) -> (server, admin)"""

    def start(tier_1: dict | None = None, extra_plugins=(), backend=None, settings=None):
        merged = {"limits": {"tiers": {1: tier_1 or tier()}, "upgrade": {"enabled": False}},
                  "axiom": {"max_tokens": 16}}
        merged.update(settings or {})
        server = serve(backend or ScriptedBackend(), plugins=[adyton_limits.LimitsPlugin(), *extra_plugins],
                       settings=merged)
        key = (tmp_path / "home" / "limits" / "admin.key").read_text().strip()
        admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        return server, admin

    return start


def new_account(admin: httpx.Client, name: str = "t") -> dict:
    r = admin.post("/admin/accounts", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def post(server, body) -> httpx.Response:
    return httpx.post(server.base_url + "/api/chat", json=body, timeout=30)


def wait_usage(admin: httpx.Client, account: str, requests: int, timeout: float = 10.0) -> list[dict]:
    """The ledger is written after the response; poll until it has the rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = admin.get("/admin/usage", params={"account": account}).json()["usage"]
        if sum(r["requests"] for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_known_account_number_is_served(limited):
    server, admin = limited()
    account = new_account(admin)
    r = post(server, chat_body(session_id=account["account_number"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Hello, world!"}
    assert "x-ratelimit-remaining-requests" in r.headers


def test_unknown_account_number_is_401(limited):
    server, admin = limited()
    new_account(admin)
    r = post(server, chat_body(session_id=ACCOUNT))  # well-formed, but nobody's
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["field"] == "sessionId"
    assert "unknown" in body["error"]


def test_malformed_is_401_before_the_auth_plugin(limited):
    server, _admin = limited()
    r = post(server, chat_body(session_id="42"))
    assert r.status_code == 401
    assert r.json()["code"] == "malformed_session_id"
    r = post(server, chat_body(session_id=None))
    assert r.status_code == 401
    assert r.json()["code"] == "missing_session_id"


def test_disabled_account_is_401(limited):
    server, admin = limited()
    account = new_account(admin)
    assert admin.post(f"/admin/accounts/{account['id']}/disable").status_code == 200
    r = post(server, chat_body(session_id=account["account_number"]))
    assert r.status_code == 401, r.text
    assert r.json()["field"] == "sessionId"
    assert "disabled" in r.json()["error"]


def test_api_key_is_not_an_account_number(limited):
    server, admin = limited()
    account = new_account(admin)
    r = post(server, chat_body(session_id=account["api_key"]))
    assert r.status_code == 401
    assert r.json()["code"] == "malformed_session_id"


def test_unknown_model_needs_auth_first(limited):
    server, _admin = limited()
    r = post(server, chat_body(model="nope", session_id=ACCOUNT))
    assert r.status_code == 401  # no model list for strangers


def test_account_limit_is_429_with_retry_after(limited):
    server, admin = limited(tier(rpm=2))
    account = new_account(admin)
    body = chat_body(session_id=account["account_number"])
    assert post(server, body).status_code == 200
    assert post(server, body).status_code == 200
    r = post(server, body)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    err = r.json()
    assert err["code"] == "rate_limit_exceeded"
    assert set(err) >= {"error", "code", "field"}
    # another account is not affected
    other = new_account(admin, "other")
    assert post(server, chat_body(session_id=other["account_number"])).status_code == 200


def test_usage_is_recorded_for_axiom_requests(limited):
    server, admin = limited()
    account = new_account(admin)
    assert post(server, chat_body(session_id=account["account_number"])).status_code == 200
    rows = wait_usage(admin, account["id"], 1)
    assert [(r["outcome"], r["requests"], r["completion_tokens"]) for r in rows] == [("ok", 1, 4)]


def test_one_account_one_ledger_across_openai_and_axiom(limited):
    adyton_openai = pytest.importorskip("adyton_openai")
    server, admin = limited(tier(rpm=3), extra_plugins=[adyton_openai])
    account = new_account(admin)
    openai = httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {account['api_key']}"})
    r = openai.post("/v1/chat/completions", json={"model": "scripted-model", "max_tokens": 16,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    axiom = chat_body(session_id=account["account_number"])
    assert post(server, axiom).status_code == 200
    r = openai.post("/v1/chat/completions", json={"model": "scripted-model", "max_tokens": 16,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    # the 4th request of the minute is refused on either surface: one set of counters
    r = post(server, axiom)
    assert r.status_code == 429, r.text
    assert "Retry-After" in r.headers
    r = openai.post("/v1/chat/completions", json={"model": "scripted-model", "max_tokens": 16,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429
    # and one ledger, with both wire formats in it
    rows = wait_usage(admin, account["id"], 3)
    assert sum(r["requests"] for r in rows if r["outcome"] == "ok") == 3
    service = adyton_limits.service_for(server.app.extensions["adyton"])
    formats = sorted(row["wire_format"] for row in service.store.ledger(account["id"]) if row["outcome"] == "ok")
    assert formats == ["axiom", "openai", "openai"]
