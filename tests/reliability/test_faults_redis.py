"""Redis faults under adyton-limits (issue 15, items 5 and 6), with a real
redis-server on a loopback port that the test pauses, kills and restarts:

* ``kill -STOP``: requests are refused with 503 (not hung, not 500) after
  ``redis_timeout_s``; after ``kill -CONT`` the slot acquisitions Redis had
  queued land late, yet no in-flight slot stays held: the refused requests'
  slots are released in the background or expire (``slot_lease_s``), and
  the account gets its full concurrency back;
* ``kill -9`` and a restart of Redis: 503 while it is gone, 200 again once it
  is back, nothing held.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from faults_helpers import (
    limits_app,
    live_slots,
    new_account,
    redis_server,
    serving,
    tier,
    wait_for,
)

from adyton.testing import ScriptedBackend

LEASE = 2.0


def _app(tmp_path, redis, backend, concurrent=2):
    return limits_app(tmp_path / "home", backend, tiers={1: tier(concurrent_requests=concurrent)},
                      limits={"storage_uri": redis.url, "slot_lease_s": LEASE, "redis_timeout_s": 1.0,
                              "redis_pool_timeout_s": 2.0})


def _post(base: str, key: str, max_tokens: int = 2) -> httpx.Response:
    return httpx.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": max_tokens},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _both_admitted(base: str, key: str, backend: ScriptedBackend) -> None:
    """Two overlapping requests of a 2-slot account are both admitted."""
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, base, key, 60)
        assert backend.running.wait(10)
        second = pool.submit(_post, base, key, 2)
        assert second.result().status_code == 200, second.result().text
        assert first.result().status_code == 200


def test_redis_pause_refuses_with_503_and_leaks_no_slot(tmp_path):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.01, max_concurrency=2, eos_at_end=False)
    with redis_server() as redis:
        app = _app(tmp_path, redis, backend)
        acct = new_account(app)
        slots_key = f"adyton/{acct.account.id}/slots"
        with serving(app) as server:
            base = server.base_url
            assert _post(base, acct.api_key).status_code == 200
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(4) as pool:
                    refused = list(pool.map(lambda _: _post(base, acct.api_key), range(4)))
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            for r in refused:
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] in ("service_unavailable", "server_error")
                assert "Retry-After" in r.headers
            # the queued acquisitions have landed by now; none stays held
            wait_for(lambda: live_slots(redis, slots_key) == 0, timeout=3 * LEASE + 5,
                     what="the late slot entries to be released or to expire")
            _both_admitted(base, acct.api_key, backend)
            assert live_slots(redis, slots_key) == 0


def test_redis_killed_and_restarted(tmp_path):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.01, max_concurrency=2, eos_at_end=False)
    with redis_server() as redis:
        app = _app(tmp_path, redis, backend)
        acct = new_account(app)
        with serving(app) as server:
            base = server.base_url
            assert _post(base, acct.api_key).status_code == 200
            redis.stop()  # kill -9
            r = _post(base, acct.api_key)
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            redis.start()  # same port, empty
            wait_for(lambda: _post(base, acct.api_key).status_code == 200, timeout=15,
                     what="requests to be admitted again")
            _both_admitted(base, acct.api_key, backend)
            wait_for(lambda: live_slots(redis, f"adyton/{acct.account.id}/slots") == 0, timeout=5,
                     what="every slot to be released")


def test_a_running_request_keeps_its_slot_past_the_lease(tmp_path):
    """Leases are renewed while the request runs: a request that outlives
    ``slot_lease_s`` still holds its slot (no over-admission)."""
    backend = ScriptedBackend(["a"] * 400, delay_s=0.02, max_concurrency=2, eos_at_end=False)
    with redis_server() as redis:
        app = _app(tmp_path, redis, backend, concurrent=1)
        acct = new_account(app)
        slots_key = f"adyton/{acct.account.id}/slots"
        with serving(app) as server:
            base = server.base_url
            with ThreadPoolExecutor(1) as pool:
                long = pool.submit(_post, base, acct.api_key, 250)  # ~5 s, 2.5 leases
                assert backend.running.wait(10)
                time.sleep(2.5 * LEASE * 0.8)
                assert backend.running.is_set() and live_slots(redis, slots_key) == 1
                r = _post(base, acct.api_key)
                assert r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit_exceeded"
                assert long.result().status_code == 200
            wait_for(lambda: live_slots(redis, slots_key) == 0, timeout=5, what="the slot to be released")
