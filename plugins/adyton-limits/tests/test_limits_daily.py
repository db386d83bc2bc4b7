"""Daily windows at 00:00 UTC and automatic tier upgrades (injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from limits_helpers import DATABASES, body, new_account, service, tier

from adyton.testing import ServerThread


def test_daily_quota_and_reset_at_utc_midnight(make_app, clock):
    clock.set(datetime(2025, 3, 10, 23, 59, 50, tzinfo=UTC))
    app = make_app(tiers={1: tier(requests_per_day=3)})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        for left in (2, 1, 0):
            r = httpx.post(url, json=body(max_tokens=4), headers=headers)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-remaining-requests"] == str(left)
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-reset-requests"] == "10s"
        r = httpx.post(url, json=body(max_tokens=4), headers=headers)
        assert r.status_code == 429
        err = r.json()["err"]
        assert err["code"] == "daily_quota_exceeded" and "00:00 UTC" in err["message"]
        assert r.headers["x-should-retry"] == "false"
        assert r.headers["Retry-After"] == "10"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        clock.advance(5)
        assert httpx.post(url, json=body(max_tokens=4), headers=headers).status_code == 429
        clock.advance(6)  # 00:00:01 the next day
        r = httpx.post(url, json=body(max_tokens=4), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining-requests"] == "2"


def test_daily_token_quota(make_app, clock):
    app = make_app(tiers={1: tier(tokens_per_day=100)})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        r = httpx.post(url, json=body(max_tokens=80), headers=headers)  # reserves 83, uses 7
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 83)
        r = httpx.post(url, json=body(max_tokens=80), headers=headers)  # fits after the refund
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 7 - 83)
        r = httpx.post(url, json=body(max_tokens=90), headers=headers)  # 93 > 86 left
        assert r.status_code == 429
        assert r.json()["err"]["code"] == "daily_quota_exceeded"
        assert r.headers["x-should-retry"] == "false"
        retry = int(r.headers["Retry-After"])
        assert 11 * 3600 < retry <= 12 * 3600  # the clock says 12:00:05 UTC


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_tier_upgrade_by_usage(make_app, clock):
    tiers = {1: tier(requests_per_day=4), 2: tier(requests_per_day=20), 3: tier(requests_per_day=1000)}
    app = make_app(tiers=tiers, limits={"upgrade": {"enabled": True, "share": 0.5, "days": 2, "max_tier": 2}})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}
    store = service(app).store
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        client = httpx.Client()

        def call():
            r = client.post(url, json=body(max_tokens=4), headers=headers)
            assert r.status_code == 200, r.text
            return r

        call()
        call()  # day 1: 2 of 4 requests = 50%: one counting day
        assert store.get(acct.account.id).tier == 1
        clock.advance(86400)
        call()  # day 2: 25%
        assert store.get(acct.account.id).tier == 1
        call()  # day 2: 50% -> second counting day -> tier 2
        assert store.get(acct.account.id).tier == 2
        r = call()
        assert r.headers["x-ratelimit-limit-requests"] == "20"  # the new tier's day
        # two more busy days would promote again, but max_tier stops
        # automatic promotion at 2 (higher tiers: by hand)
        clock.advance(86400)
        for _ in range(12):
            call()
        clock.advance(86400)
        for _ in range(12):
            call()
        assert store.get(acct.account.id).tier == 2
        client.close()


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_restart_keeps_daily_counters_with_memory_storage(make_app, clock):
    tiers = {1: tier(requests_per_day=10)}
    app = make_app(tiers=tiers)
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}
    with ServerThread(app) as server:
        for _ in range(3):
            assert httpx.post(server.base_url + "/t/generate", json=body(max_tokens=4),
                              headers=headers).status_code == 200
    app2 = make_app(tiers=tiers)  # a fresh process would start from the ledger too
    with ServerThread(app2) as server:
        r = httpx.post(server.base_url + "/t/generate", json=body(max_tokens=4), headers=headers)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-requests"] == "6"
