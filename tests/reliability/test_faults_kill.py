"""``kill -9`` of a server during a burst, with Redis counters (issue 15,
item 6): the ledger stays consistent (SQLite opens, every answered request
has its row, the daily totals match the rows) and the dead server's
in-flight slots do not lock the account out: a restarted server admits the
account's full concurrency within ``slot_lease_s``, not after an hour."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import httpx
from faults_helpers import live_slots, redis_server, start_server, tier, wait_for

from adyton.testing import free_port
from adyton_limits.store import AccountStore

LEASE = 2.0
SLOTS = 4


def test_kill_9_during_a_burst_then_restart(tmp_path):
    home = tmp_path / "home"
    store = AccountStore(home / "limits" / "accounts.sqlite3").open()
    acct = store.create_account(1, "burst")
    store.close()
    db = home / "limits" / "accounts.sqlite3"
    with redis_server() as redis:
        settings = {"home": str(home), "queue": {"max_waiting": 100},
                    "limits": {"storage_uri": redis.url, "slot_lease_s": LEASE, "upgrade": {"enabled": False},
                               "tiers": {1: tier(concurrent_requests=SLOTS)}}}
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/completions"
        headers = {"Authorization": f"Bearer {acct.api_key}"}
        slots_key = f"adyton/{acct.account.id}/slots"
        told: list[dict] = []  # usage of every answer a client received
        proc = start_server(port, settings, delay_s=0.01)
        try:
            async def burst() -> None:
                async def worker(client: httpx.AsyncClient, long: bool) -> None:
                    while True:
                        try:
                            r = await client.post(url, headers=headers, json={
                                "prompt": "go", "max_tokens": 300 if long else 3})
                        except httpx.HTTPError:
                            return  # the server died under us: that request was in flight
                        if r.status_code == 200:
                            told.append(r.json()["usage"])
                        else:
                            assert r.status_code == 429, r.text  # all slots busy

                async with httpx.AsyncClient(timeout=30) as client:
                    tasks = [asyncio.create_task(worker(client, i == 0)) for i in range(SLOTS + 2)]
                    while len(told) < 30:
                        await asyncio.sleep(0.01)
                    # the long request holds a slot for seconds: kill while it runs
                    assert live_slots(redis, slots_key) >= 1
                    os.kill(proc.pid, signal.SIGKILL)
                    await asyncio.gather(*tasks)

            asyncio.run(asyncio.wait_for(burst(), 60))
            proc.wait(10)
            held_by_the_dead = live_slots(redis, slots_key)
            assert held_by_the_dead >= 1

            # the ledger: opens, one row per answer (+ at most those in flight)
            conn = sqlite3.connect(db)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT outcome, prompt_tokens, completion_tokens FROM ledger"
                                " WHERE account_id = ?", (acct.account.id,)).fetchall()
            daily = conn.execute("SELECT sum(requests), sum(prompt_tokens + completion_tokens)"
                                 " FROM usage_daily WHERE account_id = ?", (acct.account.id,)).fetchone()
            conn.close()
            ok = [r for r in rows if r[0] == "ok"]
            assert len(told) <= len(ok) <= len(told) + SLOTS + 2
            assert daily[0] == len(rows) and daily[1] == sum(r[1] + r[2] for r in rows)

            # restart: within the lease the dead server's slots are gone and
            # the account runs SLOTS requests at once again
            restarted = time.monotonic()
            proc = start_server(port, settings, delay_s=0.01)
            wait_for(lambda: live_slots(redis, slots_key) == 0, timeout=LEASE + 5,
                     what="the dead server's slots to expire")
            assert time.monotonic() - restarted < LEASE + 5

            async def full_concurrency() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=30) as client:
                    return await asyncio.gather(*(client.post(url, headers=headers, json={
                        "prompt": "again", "max_tokens": 50}) for _ in range(SLOTS)))

            responses = asyncio.run(full_concurrency())
            assert [r.status_code for r in responses] == [200] * SLOTS, [r.text for r in responses]
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
