"""kill -9 in the middle of traffic: the database opens, and its ledger
matches what clients were told (except requests still in flight)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from adyton.testing import ServerProcess, free_port
from adyton_limits.store import AccountStore

WORKERS = 12


def start(home: Path, port: int, uri: str = "memory://") -> subprocess.Popen:
    """``limits_kill_app`` in its own process, answering /health."""
    server = ServerProcess("limits_kill_app:make_app", {"home": str(home), "uri": uri}, port=port,
                           path=Path(__file__).parent).start()
    assert server.proc is not None
    return server.proc


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_kill_9_during_load(tmp_path, storage, request):
    uri = request.getfixturevalue("redis_server").url if storage == "redis" else "memory://"
    home = tmp_path / "home"
    store = AccountStore(home / "limits" / "accounts.sqlite3").open()
    acct = store.create_account(1, "load")
    store.close()
    port = free_port()
    proc = start(home, port, uri)
    url = f"http://127.0.0.1:{port}/t/generate"
    told: list[dict] = []  # usage of every answer a client received
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                r = await client.post(url, json={"messages": [{"role": "user", "content": "go"}], "max_tokens": 5},
                                      headers={"x-api-key": acct.api_key})
            except httpx.HTTPError:
                return  # the server died under us: that request was in flight
            assert r.status_code == 200, r.text
            told.append(r.json()["usage"])

    async def load() -> None:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=WORKERS)) as client:
            tasks = [asyncio.create_task(worker(client)) for _ in range(WORKERS)]
            while len(told) < 150:
                await asyncio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.gather(*tasks)

    try:
        asyncio.run(asyncio.wait_for(load(), 60))
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    db = home / "limits" / "accounts.sqlite3"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT outcome, prompt_tokens, completion_tokens FROM ledger WHERE account_id = ?",
                        (acct.account.id,)).fetchall()
    daily = conn.execute("SELECT sum(requests), sum(prompt_tokens + completion_tokens) FROM usage_daily"
                         " WHERE account_id = ?", (acct.account.id,)).fetchone()
    conn.close()
    ok = [r for r in rows if r[0] == "ok"]
    # every answer a client got has its row; at most the in-flight ones more
    assert len(told) <= len(ok) <= len(told) + WORKERS
    assert {(u["prompt_tokens"], u["completion_tokens"]) for u in told} == {(r[1], r[2]) for r in ok}
    assert daily[0] == len(rows) and daily[1] == sum(r[1] + r[2] for r in rows)

    # restart on the same home: it opens the database and keeps serving
    proc = start(home, port, uri)
    try:
        r = httpx.post(url, json={"messages": [{"role": "user", "content": "again"}], "max_tokens": 5},
                       headers={"x-api-key": acct.api_key}, timeout=10)
        assert r.status_code == 200
        if storage == "memory":  # day counters were rebuilt from the ledger
            assert int(r.headers["x-ratelimit-remaining-requests"]) == 100_000 - len(rows) - 1
    finally:
        proc.terminate()
        proc.wait(10)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == len(rows) + 1
    conn.close()
