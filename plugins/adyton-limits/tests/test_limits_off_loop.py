"""adyton-limits reads the accounts database off the event loop (issue 16
follow-up): on a shared PostgreSQL database, an authentication query that
waits (here: for a table lock another connection holds) must not stall the
server's other work — ``/health``, a stream in flight, a request whose
lookup does not wait — and completes correctly once the lock is gone. A
database that cannot be read at all is a 503, not a 500."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from limits_helpers import body, new_account, service, tier

from adyton.testing import ScriptedBackend, ServerThread

#: how long the server may take to answer while a lookup waits (a loaded 2-core machine)
BOUND_S = 2.0


def _wait_for_lock_waiter(conn: sa.Connection, table: str, timeout_s: float = 10.0) -> None:
    """Until a query (the server's lookup) waits for ``conn``'s lock on ``table``."""
    deadline = time.monotonic() + timeout_s
    query = sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)")
    while time.monotonic() < deadline:
        if conn.execute(query, {"t": table}).scalar_one():
            return
        time.sleep(0.02)
    raise AssertionError(f"no query waited for the lock on {table} within {timeout_s} s")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_lookup_waiting_for_a_lock_does_not_stall_the_server(make_app, db_url):
    words = [f"w{i} " for i in range(60)]
    delay_s = 0.05  # the stream lasts 3 s: still in flight while the lookup waits
    app = make_app(ScriptedBackend(words, delay_s=delay_s), tiers={1: tier()})
    waiting = new_account(app, 1, "waits")
    streaming = new_account(app, 1, "streams")
    other = new_account(app, 1, "other")
    locker = sa.create_engine(db_url, poolclass=sa.NullPool)
    with ServerThread(app) as server, ThreadPoolExecutor(1) as pool, \
            httpx.Client(base_url=server.base_url, timeout=BOUND_S) as client:
        gen = "/t/generate"
        with client.stream("POST", gen, json=body(stream=True, max_tokens=len(words)),
                           headers={"x-api-key": streaming.api_key}) as stream:
            assert stream.status_code == 200, stream.read()
            lines = stream.iter_lines()
            while "text" not in json.loads(next(lines)):  # until it generates
                pass
            stream_started = time.monotonic()
            conn = locker.connect()
            tx = conn.begin()
            try:
                # every read of api_keys now waits (a plain row lock would not stop a SELECT)
                conn.execute(sa.text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
                blocked = pool.submit(httpx.post, server.base_url + gen, json=body(max_tokens=3),
                                      headers={"x-api-key": waiting.api_key}, timeout=60)
                _wait_for_lock_waiter(conn, "api_keys")
                assert time.monotonic() - stream_started < len(words) * delay_s / 2, \
                    "too slow a machine: the stream ended before the lookup waited"

                # the loop still answers: /health ...
                t0 = time.monotonic()
                assert client.get("/health").status_code == 200
                assert time.monotonic() - t0 < BOUND_S
                # ... the stream in flight keeps streaming, to its end ...
                rest = [json.loads(line) for line in lines if line]
                assert "usage" in rest[-1] and rest[-1]["usage"]["completion_tokens"] == len(words)
                # ... and a request whose lookup does not read api_keys is served
                r = client.post(gen, json=body(max_tokens=3, sessionId=other.account_number))
                assert r.status_code == 200, r.text
                assert not blocked.done()  # still waiting for the lock
            finally:
                tx.rollback()  # the lock goes
                conn.close()
        r = blocked.result(timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == "w0 w1 w2 "
        # the lookup read the database as it is now: a revoked key is refused at once
        admin = {"Authorization": "Bearer " + service(app).admin_key_path.read_text().strip()}
        assert client.post(f"/admin/accounts/{waiting.account.id}/rotate-key", headers=admin).status_code == 200
        r = client.post(gen, json=body(max_tokens=3), headers={"x-api-key": waiting.api_key})
        assert r.status_code == 401 and r.json()["err"]["code"] == "invalid_api_key"
    locker.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_accounts_database_that_is_gone_is_a_503(make_app, db_url, postgres_server):
    app = make_app(tiers={1: tier()})
    acct = new_account(app, 1)
    name = sa.engine.make_url(db_url).database
    with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert client.post("/t/generate", json=body(max_tokens=2), headers={"x-api-key": acct.api_key}
                           ).status_code == 200
        admin_engine = sa.create_engine(postgres_server.url_for("postgres"), poolclass=sa.NullPool,
                                        isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin_engine.dispose()
        r = client.post("/t/generate", json=body(max_tokens=2), headers={"x-api-key": acct.api_key})
        assert r.status_code == 503, r.text
        assert r.json()["err"]["code"] == "accounts_db_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        assert client.get("/health").status_code == 200
