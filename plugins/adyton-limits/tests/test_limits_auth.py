"""Credentials: keys, account numbers, rotation, disabling (real sockets)."""

from __future__ import annotations

import httpx
import pytest
from limits_helpers import DATABASES, body, new_account, service

from adyton.testing import ServerThread


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_key_bearer_and_account_number(make_app):
    app = make_app()
    acct = new_account(app, name="alice")
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        r = httpx.post(url, json=body(), headers={"x-api-key": acct.api_key})
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"]
        assert r.headers["x-ratelimit-remaining-tokens"]
        r = httpx.post(url, json=body(), headers={"Authorization": f"Bearer {acct.api_key}"})
        assert r.status_code == 200, r.text
        r = httpx.post(url, json=body(sessionId=acct.account_number))
        assert r.status_code == 200, r.text
        # an account number sent as a Bearer token works too
        r = httpx.post(url, json=body(), headers={"Authorization": f"Bearer {acct.account_number}"})
        assert r.status_code == 200, r.text


def test_missing_malformed_unknown(make_app):
    app = make_app()
    acct = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        r = httpx.post(url, json=body())
        assert r.status_code == 401 and "missing" in r.json()["err"]["message"]
        r = httpx.post(url, json=body(), headers={"x-api-key": "nonsense key!"})
        assert r.status_code == 401 and "malformed API key" in r.json()["err"]["message"]
        r = httpx.post(url, json=body(sessionId="12345"))
        assert r.status_code == 401 and "malformed account number" in r.json()["err"]["message"]
        r = httpx.post(url, json=body(), headers={"x-api-key": "sk-" + "A" * 48})
        assert r.status_code == 401 and "unknown" in r.json()["err"]["message"]
        wrong = ("1" if acct.account_number[0] != "1" else "2") + acct.account_number[1:]
        r = httpx.post(url, json=body(sessionId=wrong))
        assert r.status_code == 401 and "unknown account number" in r.json()["err"]["message"]


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_rotation_invalidates_old_key_at_once(make_app):
    app = make_app()
    acct = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        assert httpx.post(url, json=body(), headers={"x-api-key": acct.api_key}).status_code == 200
        new_key = service(app).store.rotate_key(acct.account.id)
        r = httpx.post(url, json=body(), headers={"x-api-key": acct.api_key})
        assert r.status_code == 401 and "revoked" in r.json()["err"]["message"]
        assert httpx.post(url, json=body(), headers={"x-api-key": new_key}).status_code == 200
        # the account number is a separate credential and still works
        assert httpx.post(url, json=body(sessionId=acct.account_number)).status_code == 200


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_disabled_account(make_app):
    app = make_app()
    acct = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        assert httpx.post(url, json=body(), headers={"x-api-key": acct.api_key}).status_code == 200
        service(app).store.set_enabled(acct.account.id, False)
        r = httpx.post(url, json=body(), headers={"x-api-key": acct.api_key})
        assert r.status_code == 401
        assert r.json()["err"]["code"] == "account_disabled"
        assert httpx.post(url, json=body(sessionId=acct.account_number)).status_code == 401
        service(app).store.set_enabled(acct.account.id, True)
        assert httpx.post(url, json=body(), headers={"x-api-key": acct.api_key}).status_code == 200


def test_secrets_stored_only_as_hashes(make_app, home):
    app = make_app()
    acct = new_account(app)
    raw = service(app).db_path.read_bytes()
    assert acct.api_key.encode() not in raw
    assert acct.account_number.encode() not in raw
