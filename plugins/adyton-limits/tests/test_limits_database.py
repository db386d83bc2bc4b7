"""adyton-limits on the kernel's SQL database (issue 16): an existing
accounts file of the raw-sqlite3 releases is adopted without loss, servers
sharing one PostgreSQL database see a rotated key at once, and ledger rows
settled by several servers at once add up exactly."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import pytest
import sqlalchemy as sa
from limits_helpers import DATABASES, body, service

from adyton.testing import ServerThread
from adyton_limits.store import AccountStore, LedgerRow, hash_secret, new_account_number, new_api_key

# the schema the raw-sqlite3 releases created (adyton_limits/store.py before Alembic)
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    number_hash TEXT NOT NULL UNIQUE,
    number_last4 TEXT NOT NULL,
    tier INTEGER NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    tier_changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reserved_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    wire_format TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    day TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger(account_id, finished_at);
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);
CREATE TABLE IF NOT EXISTS tier_changes (
    account_id TEXT NOT NULL,
    at REAL NOT NULL,
    old_tier INTEGER NOT NULL,
    new_tier INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def make_old_file(path):
    """A database as an earlier release left it: one account, a used key, a
    revoked key, ledger rows and the day's totals; no Alembic version table."""
    path.parent.mkdir(parents=True)
    number, key, old_key = new_account_number(), new_api_key(), new_api_key()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(OLD_SCHEMA)
    now = 1741608005.0  # the tests' fake clock: 2025-03-10 12:00:05 UTC
    conn.execute("INSERT INTO accounts VALUES ('acct_old', 'veteran', ?, ?, 2, 1, ?, ?)",
                 (hash_secret(number), number[-4:], now - 86400 * 30, now - 86400 * 30))
    conn.execute("INSERT INTO api_keys VALUES (?, 'acct_old', ?, ?, ?)",
                 (hash_secret(old_key), old_key[:7], now - 999, now - 500))
    conn.execute("INSERT INTO api_keys VALUES (?, 'acct_old', ?, ?, NULL)", (hash_secret(key), key[:7], now - 500))
    for i in range(3):
        conn.execute("INSERT INTO ledger (account_id, model, prompt_tokens, completion_tokens, reserved_tokens,"
                     " outcome, wire_format, started_at, finished_at, day)"
                     " VALUES ('acct_old', 'm', 10, 5, 20, 'ok', 'json',"
                     " ?, ?, '2025-03-10')", (now - 60 + i, now - 59 + i))
    conn.execute("INSERT INTO usage_daily VALUES ('acct_old', '2025-03-10', 3, 30, 15)")
    conn.execute("INSERT INTO tier_changes VALUES ('acct_old', ?, 1, 2, 'manual')", (now - 86400 * 30,))
    conn.close()
    return number, key, old_key


def test_an_old_accounts_file_is_adopted_without_loss(make_app, home):
    path = home / "limits" / "accounts.sqlite3"
    number, key, old_key = make_old_file(path)
    app = make_app()
    with ServerThread(app) as server:
        svc = service(app)
        assert svc.db_path == path  # the old file stays the accounts' home
        url = server.base_url + "/t/generate"
        assert httpx.post(url, json=body(), headers={"x-api-key": key}).status_code == 200
        assert httpx.post(url, json=body(sessionId=number)).status_code == 200
        r = httpx.post(url, json=body(), headers={"x-api-key": old_key})
        assert r.status_code == 401 and "revoked" in r.json()["err"]["message"]
        r = httpx.get(server.base_url + "/v1/account", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        account = r.json()
        assert account["name"] == "veteran" and account["tier"] == 2
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version_limits").fetchall() == [("l0001",)]
        assert conn.execute("SELECT count(*) FROM ledger WHERE account_id = 'acct_old'").fetchone()[0] == 5
        assert conn.execute("SELECT requests FROM usage_daily WHERE account_id = 'acct_old'").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM tier_changes").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 2
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # nothing went to the kernel's database
    assert not (home / "adyton.sqlite3").exists()


def test_a_new_install_keeps_accounts_in_the_kernel_database(make_app, home):
    app = make_app()
    with ServerThread(app):
        assert service(app).db_path == home / "adyton.sqlite3"
    assert not (home / "limits" / "accounts.sqlite3").exists()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_rotation_on_one_server_is_refused_by_the_other_at_once(make_app, db_url):
    app_a, app_b = make_app(), make_app()
    new = service(app_a)
    new.open_store()
    acct = new.store.create_account(1, "shared")
    with ServerThread(app_a) as a, ServerThread(app_b) as b:
        gen_b = b.base_url + "/t/generate"
        assert httpx.post(gen_b, json=body(), headers={"x-api-key": acct.api_key}).status_code == 200
        r = httpx.post(a.base_url + "/v1/account/rotate-key", headers={"Authorization": f"Bearer {acct.api_key}"})
        assert r.status_code == 200, r.text
        new_key = r.json()["api_key"]
        r = httpx.post(gen_b, json=body(), headers={"x-api-key": acct.api_key})
        assert r.status_code == 401 and "revoked" in r.json()["err"]["message"]
        assert httpx.post(gen_b, json=body(), headers={"x-api-key": new_key}).status_code == 200
        # disabling on B is refused on A at once, too
        admin = {"Authorization": f"Bearer {(service(app_b).admin_key_path).read_text().strip()}"}
        assert httpx.post(b.base_url + f"/admin/accounts/{acct.account.id}/disable", headers=admin).status_code == 200
        r = httpx.post(a.base_url + "/t/generate", json=body(), headers={"x-api-key": new_key})
        assert r.status_code == 401 and r.json()["err"]["code"] == "account_disabled"
        # both servers' ledger rows are in the one database
        usage = service(app_a).store.usage(acct.account.id)
        assert sum(u["requests"] for u in usage) == 2


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_ledger_rows_settled_at_once_by_several_servers_add_up(db_url, tmp_path, clock):
    from adyton import Database

    url = db_url or f"sqlite:///{tmp_path}/shared.sqlite3"
    stores = [AccountStore(Database(url), clock=clock).open() for _ in range(2)]  # two servers
    acct = stores[0].create_account(1, "busy")
    errors = []

    def settle(store, n):
        try:
            for _i in range(25):
                store.record(LedgerRow(acct.account.id, "m", 3, 4, 10, "ok", "json", clock() - 1, clock()))
        except Exception as exc:  # noqa: BLE001 - the main thread asserts there were none
            errors.append(exc)

    threads = [threading.Thread(target=settle, args=(store, n)) for store in stores for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    (usage,) = stores[1].usage(acct.account.id)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (150, 450, 600)
    assert stores[1].daily_usage("2025-03-10") == [(acct.account.id, 150, 1050)]
    with stores[0].db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger")).scalar() == 150
    for store in stores:
        store.db.dispose()


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_store_search_is_case_insensitive_and_literal(db_url, tmp_path, clock):
    from adyton import Database

    store = AccountStore(Database(db_url or f"sqlite:///{tmp_path}/s.sqlite3"), clock=clock).open()
    alice = store.create_account(1, "Alice_Smith")
    store.create_account(1, "alicexsmith")
    clock.advance(1)
    store.create_account(3, "bob 100%")
    assert [a.name for a in store.page("alice_")[1]] == ["Alice_Smith"]  # _ is literal
    assert store.page("ALICE")[0] == 2
    assert [a.name for a in store.page("100%")[1]] == ["bob 100%"]
    total, page = store.page("", limit=2, offset=2)
    assert total == 3 and [a.name for a in page] == ["bob 100%"]
    assert store.find(alice.account_number).id == alice.account.id
    assert store.find(alice.account.id).name == "Alice_Smith"
    updated = store.set_tier(alice.account.id, 2)
    assert updated.tier == 2
    with pytest.raises(KeyError):
        store.rotate_key("acct_missing")
    store.db.dispose()
