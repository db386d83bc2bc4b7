"""The account holder's self-service API (``GET /v1/account``,
``POST /v1/account/rotate-key``) and the admin list's search and pages, over
real sockets with a scripted backend and a fake clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import httpx
import pytest
from limits_helpers import DATABASES, body, new_account, service, tier

from adyton.testing import ScriptedBackend, ServerThread


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_account_shows_limits_usage_and_history(make_app, clock):
    app = make_app(tiers={1: tier(requests_per_day=10, tokens_per_day=1000, requests_per_minute=5),
                          2: tier()},
                   limits={"upgrade": {"enabled": True, "share": 0.5, "days": 2, "max_tier": 2}})
    new = new_account(app, 1, "alice")
    with ServerThread(app) as server:
        url = server.base_url + "/v1/account"
        before = httpx.get(url, headers=bearer(new.api_key))
        assert before.status_code == 200, before.text
        a = before.json()
        assert a["object"] == "account" and a["id"] == new.account.id and a["name"] == "alice"
        assert a["tier"] == 1 and a["signed_in_with"] == "api_key"
        assert a["limits"]["requests_per_day"] == 10
        assert a["windows"]["requests/day"] == {"used": 0, "limit": 10, "remaining": 10,
                                                "resets_in_s": 12 * 3600 - 5}
        assert a["windows"]["requests/minute"]["resets_in_s"] == 55
        assert a["today"] == {"day": "2025-03-10", "requests": 0, "prompt_tokens": 0,
                              "completion_tokens": 0, "total_tokens": 0}
        assert len(a["history"]) == 30 and a["history"][-1]["day"] == "2025-03-10"
        assert a["history"][0]["day"] == "2025-02-09"
        assert a["upgrade"] == {"enabled": True, "days_needed": 2, "share": 0.5, "max_tier": 2,
                                "next_tier": 2, "days_counted": 0, "requests_per_day_needed": 5,
                                "tokens_per_day_needed": 500, "since": "2025-03-10"}
        assert "api_key" not in a and "account_number" not in a

        gen = server.base_url + "/t/generate"
        for _ in range(5):
            r = httpx.post(gen, json=body(max_tokens=20), headers={"x-api-key": new.api_key})
            assert r.status_code == 200, r.text
        # the 64-digit account number signs in too
        after = httpx.get(url, headers=bearer(new.account_number)).json()
        assert after["signed_in_with"] == "account_number"
        assert after["windows"]["requests/day"]["used"] == 5
        assert after["windows"]["requests/day"]["remaining"] == 5
        assert after["windows"]["requests/minute"]["remaining"] == 0
        assert after["today"]["requests"] == 5 and after["today"]["completion_tokens"] == 20
        assert after["history"][-1] == after["today"]
        # 5 requests = half of the day's 10: today counts toward the upgrade
        assert after["upgrade"]["days_counted"] == 1

        clock.set(datetime(2025, 3, 11, 9, 0, tzinfo=UTC))
        nextday = httpx.get(url, headers=bearer(new.api_key)).json()
        assert nextday["windows"]["requests/day"]["used"] == 0
        assert nextday["history"][-2]["requests"] == 5 and nextday["history"][-1]["requests"] == 0


def test_account_refusals(make_app):
    app = make_app()
    new = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/v1/account"
        r = httpx.get(url)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = httpx.get(url, headers=bearer("sk-" + "x" * 30))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(url, headers=bearer("1234"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_account_number"
        # the admin key is not an account key
        admin = service(app).admin_key_path.read_text().strip()
        assert httpx.get(url, headers=bearer(admin)).status_code == 401
        # a cross-site HTML form cannot rotate a key, even with a credential
        r = httpx.post(url + "/rotate-key", headers=bearer(new.api_key),
                       data={"x": "1"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert httpx.get(url, headers=bearer(new.api_key)).status_code == 200
        assert httpx.get(url + "/nope", headers=bearer(new.api_key)).status_code == 404
        service(app).store.set_enabled(new.account.id, False)
        r = httpx.get(url, headers=bearer(new.api_key))
        assert r.status_code == 401 and r.json()["error"]["code"] == "account_disabled"


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_rotate_my_key(make_app):
    app = make_app()
    new = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/v1/account/rotate-key"
        r = httpx.post(url, headers=bearer(new.api_key))
        assert r.status_code == 200, r.text
        rotated = r.json()["api_key"]
        assert rotated.startswith("sk-") and rotated != new.api_key
        assert r.headers["Cache-Control"] == "no-store"
        gen = server.base_url + "/t/generate"
        assert httpx.post(gen, json=body(), headers={"x-api-key": new.api_key}).status_code == 401
        assert httpx.post(gen, json=body(), headers={"x-api-key": rotated}).status_code == 200
        assert httpx.get(server.base_url + "/v1/account", headers=bearer(new.api_key)).status_code == 401
        # the account number still works, and can issue a key in turn
        r = httpx.post(url, headers=bearer(new.account_number), json={})
        assert r.status_code == 200
        assert httpx.post(gen, json=body(), headers={"x-api-key": rotated}).status_code == 401


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_admin_accounts_search_and_pages(make_app, clock):
    app = make_app()
    made = []
    for i in range(7):
        made.append(new_account(app, 1, f"team-{'red' if i % 2 else 'blue'}-{i}"))
        clock.advance(1)
    with ServerThread(app) as server:
        admin = httpx.Client(base_url=server.base_url + "/admin",
                             headers=bearer(service(app).admin_key_path.read_text().strip()))
        page = admin.get("/accounts", params={"limit": 3, "offset": 0}).json()
        assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 0
        assert [a["id"] for a in page["accounts"]] == [m.account.id for m in made[:3]]
        last = admin.get("/accounts", params={"limit": 3, "offset": 6}).json()
        assert [a["id"] for a in last["accounts"]] == [made[6].account.id]
        red = admin.get("/accounts", params={"q": "RED"}).json()
        assert red["total"] == 3 and all("red" in a["name"] for a in red["accounts"])
        by_digits = admin.get("/accounts", params={"q": made[4].account.number_last4}).json()
        assert made[4].account.id in [a["id"] for a in by_digits["accounts"]]
        assert admin.get("/accounts", params={"q": "%"}).json()["total"] == 0
        assert admin.get("/accounts", params={"q": "blue_"}).json()["total"] == 0  # "_" is literal
        r = admin.get("/accounts", params={"limit": "zero"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
        assert admin.get("/accounts", params={"limit": 0}).status_code == 400
        tiers = admin.get("/tiers").json()
        assert tiers["default_tier"] == 1 and sorted(tiers["tiers"]) == ["1", "2", "3", "4", "5"]
        assert tiers["tiers"]["2"]["requests_per_day"] == 4000
        # without paging parameters: every account, as before
        assert len(admin.get("/accounts").json()["accounts"]) == 7
        # state changes refuse form bodies (what a cross-site form would send)
        r = admin.post("/accounts", data={"name": "x"})
        assert r.status_code == 415
        assert admin.get("/accounts", params={"limit": 1}).json()["total"] == 7
        admin.close()


def test_account_on_redis_counts_a_running_request(make_app, redis_limits):
    """On Redis too (counters and leased in-flight slots), the account's
    windows are read without changing them, a running request included."""
    backend = ScriptedBackend(delay_s=0.2)
    app = make_app(backend, limits=redis_limits)
    new = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/v1/account"
        idle = httpx.get(url, headers=bearer(new.api_key)).json()
        assert idle["windows"]["concurrent requests"]["used"] == 0
        done = threading.Event()

        def run():
            httpx.post(server.base_url + "/t/generate", json=body(max_tokens=10),
                       headers={"x-api-key": new.api_key}, timeout=30)
            done.set()

        worker = threading.Thread(target=run)
        worker.start()
        assert backend.running.wait(10)
        busy = httpx.get(url, headers=bearer(new.api_key)).json()
        assert busy["windows"]["concurrent requests"]["used"] == 1
        assert busy["windows"]["requests/day"]["used"] == 1
        assert busy["windows"]["tokens/day"]["used"] > 0      # the reservation, before settling
        assert busy["today"]["requests"] == 0                 # the ledger: not settled yet
        worker.join(30)
        assert done.is_set()
        after = httpx.get(url, headers=bearer(new.api_key)).json()
        assert after["windows"]["concurrent requests"]["used"] == 0
        assert after["today"]["requests"] == 1
        assert after["windows"]["tokens/day"]["used"] == after["today"]["total_tokens"]
