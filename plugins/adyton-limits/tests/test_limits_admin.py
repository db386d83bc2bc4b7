"""The admin HTTP API, the sign-up endpoint and the CLI."""

from __future__ import annotations

import json
import stat

import httpx
import pytest
from click.testing import CliRunner
from limits_helpers import DATABASES, body, service

from adyton.testing import ServerThread


def admin_key(app) -> str:
    path = service(app).admin_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


def test_admin_api_refuses_without_the_admin_key(make_app):
    app = make_app()
    with ServerThread(app) as server:
        url = server.base_url + "/admin/accounts"
        r = httpx.post(url, json={})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "missing_admin_key"
        # says what is needed, but not where the key file lives on the server
        assert "admin key" in r.json()["error"]["message"]
        assert "admin.key" not in r.json()["error"]["message"] and "/" not in r.json()["error"]["message"]
        r = httpx.post(url, json={}, headers={"Authorization": "Bearer adm-wrong"})
        assert r.status_code == 403
        assert httpx.get(url, headers={"x-admin-key": "nope"}).status_code == 403
        # an account's own key is not an admin key
        key = admin_key(app)
        created = httpx.post(url, json={}, headers={"Authorization": f"Bearer {key}"}).json()
        r = httpx.get(url, headers={"Authorization": f"Bearer {created['api_key']}"})
        assert r.status_code == 403


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_admin_api_manages_accounts(make_app):
    app = make_app()
    with ServerThread(app) as server:
        key = admin_key(app)
        admin = httpx.Client(base_url=server.base_url + "/admin", headers={"Authorization": f"Bearer {key}"})
        r = admin.post("/accounts", json={"tier": 2, "name": "bob"})
        assert r.status_code == 201, r.text
        new = r.json()
        assert len(new["account_number"]) == 64 and new["account_number"].isdigit()
        assert new["api_key"].startswith("sk-") and new["tier"] == 2
        gen = server.base_url + "/t/generate"
        assert httpx.post(gen, json=body(), headers={"x-api-key": new["api_key"]}).status_code == 200
        assert httpx.post(gen, json=body(sessionId=new["account_number"])).status_code == 200

        r = admin.post(f"/accounts/{new['id']}/rotate-key")
        assert r.status_code == 200
        rotated = r.json()["api_key"]
        assert httpx.post(gen, json=body(), headers={"x-api-key": new["api_key"]}).status_code == 401
        assert httpx.post(gen, json=body(), headers={"x-api-key": rotated}).status_code == 200

        usage = admin.get("/usage", params={"account": new["id"], "since": "1d"}).json()["usage"]
        assert usage == [{"account_id": new["id"], "outcome": "ok", "requests": 3,
                          "prompt_tokens": 9, "completion_tokens": 12}]
        assert admin.get(f"/accounts/{new['id']}").json()["name"] == "bob"
        assert [a["id"] for a in admin.get("/accounts").json()["accounts"]] == [new["id"]]
        assert admin.post(f"/accounts/{new['id']}/tier", json={"tier": 3}).json()["tier"] == 3
        assert admin.post(f"/accounts/{new['id']}/tier", json={"tier": 99}).status_code == 400
        assert admin.post(f"/accounts/{new['id']}/disable").json()["enabled"] is False
        assert httpx.post(gen, json=body(), headers={"x-api-key": rotated}).status_code == 401
        assert admin.get("/accounts/acct_nope").status_code == 404
        r = admin.get("/nothing-here")
        assert r.status_code == 404 and "error" in r.json()
        admin.close()


def test_signup_off_by_default(make_app):
    app = make_app()
    with ServerThread(app) as server:
        assert httpx.post(server.base_url + "/create-account").status_code == 404


def test_signup_when_enabled(make_app):
    app = make_app(limits={"signup_enabled": True, "signup_per_hour": 2})
    with ServerThread(app) as server:
        r = httpx.post(server.base_url + "/create-account")
        assert r.status_code == 201, r.text
        number = r.json()["account_number"]
        assert len(number) == 64 and number.isdigit()
        assert httpx.post(server.base_url + "/t/generate", json=body(sessionId=number)).status_code == 200
        assert httpx.post(server.base_url + "/create-account").status_code == 201
        r = httpx.post(server.base_url + "/create-account")
        assert r.status_code == 429 and "Retry-After" in r.headers


@pytest.fixture
def cli(home, monkeypatch):
    monkeypatch.setenv("ADYTON_HOME", str(home))
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "limits")
    monkeypatch.delenv("ADYTON_CONFIG", raising=False)
    from adyton.cli import build_cli

    group = build_cli()
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(group, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return run


def test_cli_accounts(cli, home):
    out = json.loads(cli("accounts", "create", "--tier", "2", "--name", "carol", "--json"))
    assert out["tier"] == 2 and out["name"] == "carol" and len(out["account_number"]) == 64
    text = cli("accounts", "create")
    assert "account number:" in text and "sk-" in text
    listed = json.loads(cli("accounts", "list", "--json"))
    assert len(listed) == 2
    shown = json.loads(cli("accounts", "show", out["id"], "--json"))
    assert shown["limits"]["requests_per_day"] == 4000  # Axione's Tier 2
    assert "new api key" in cli("accounts", "rotate-key", out["account_number"][-4:])
    assert "-> 3" in cli("accounts", "set-tier", out["id"], "3")
    assert "disabled" in cli("accounts", "disable", out["id"])
    assert "no usage" in cli("accounts", "usage", "--since", "2020-01-01")
    assert cli("accounts", "admin-key").strip().endswith("admin.key")
