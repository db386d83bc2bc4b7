"""Exactly-N admission under concurrency, in one server and across two
servers sharing Redis."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from limits_helpers import body, new_account, service, tier

from adyton.testing import ScriptedBackend, ServerThread


async def _burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        # open the connections first so the requests really arrive together
        await asyncio.gather(*(client.get(urls[i % len(urls)].replace("/t/generate", "/health"))
                               for i in range(n)))
        return await asyncio.gather(*(
            client.post(urls[i % len(urls)], json=body(max_tokens=4), headers={"x-api-key": key})
            for i in range(n)))


def _check_exactly(responses: list[httpx.Response], admitted: int) -> None:
    codes = [r.status_code for r in responses]
    assert codes.count(200) == admitted, codes
    assert codes.count(429) == len(codes) - admitted, codes
    for r in responses:
        if r.status_code == 429:
            assert r.json()["err"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert r.headers["x-ratelimit-limit-requests"] == "20"
            assert "x-should-retry" not in r.headers


def test_exactly_20_of_50_memory(make_app):
    app = make_app(ScriptedBackend(max_concurrency=4), tiers={1: tier(requests_per_minute=20)})
    acct = new_account(app)
    with ServerThread(app) as server:
        responses = asyncio.run(_burst([server.base_url + "/t/generate"], acct.api_key, 50))
    _check_exactly(responses, 20)
    ok = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(20))  # every admitted request saw its own place


class GatedBackend(ScriptedBackend):
    """Generation waits for ``gate``: admitted requests stay in flight."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate = threading.Event()

    def generate(self, prompt, step, max_tokens, cancelled):
        self.gate.wait(20)
        yield from super().generate(prompt, step, max_tokens, cancelled)


def test_exactly_20_of_50_concurrency_limit(make_app):
    backend = GatedBackend(max_concurrency=50)
    app = make_app(backend, tiers={1: tier(concurrent_requests=20)})
    acct = new_account(app)

    async def run(url):
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=60), timeout=30) as client:
            tasks = [asyncio.create_task(client.post(url, json=body(max_tokens=4), headers={"x-api-key": acct.api_key}))
                     for _ in range(50)]
            # the refused answer at once; the admitted are held by the gate
            while sum(t.done() for t in tasks) < 30:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            assert sum(t.done() for t in tasks) == 30
            backend.gate.set()
            return await asyncio.gather(*tasks)

    with ServerThread(app) as server:
        responses = asyncio.run(run(server.base_url + "/t/generate"))
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 20, codes
        refused = [r for r in responses if r.status_code == 429]
        assert all(r.json()["err"]["code"] == "concurrency_limit_exceeded" for r in refused)
        # all settled: the slots are free again
        assert httpx.post(server.base_url + "/t/generate", json=body(),
                          headers={"x-api-key": acct.api_key}).status_code == 200
    assert service(app).store.usage(acct.account.id)[0]["requests"] == 21


def test_exactly_20_of_50_two_servers_sharing_redis(make_app, redis_limits):
    tiers = {1: tier(requests_per_minute=20)}
    app_a = make_app(ScriptedBackend(max_concurrency=4), tiers=tiers, limits=redis_limits)
    app_b = make_app(ScriptedBackend(max_concurrency=4), tiers=tiers, limits=redis_limits)
    acct = new_account(app_a)
    with ServerThread(app_a) as a, ServerThread(app_b) as b:
        assert a.port != b.port
        responses = asyncio.run(_burst([a.base_url + "/t/generate", b.base_url + "/t/generate"],
                                       acct.api_key, 50))
        _check_exactly(responses, 20)
        # both servers admitted some: the limit really is shared
        served = {str(r.url) for r in responses if r.status_code == 200}
        assert len({u.split("/t/")[0] for u in served}) == 2
    rows = service(app_a).store.usage(acct.account.id)
    assert sum(r["requests"] for r in rows if r["outcome"] == "ok") == 20


def test_redis_down_is_503_not_500(make_app, redis_limits):
    from adyton.testing import free_port

    limits = {**redis_limits}
    app = make_app(limits=limits)
    acct = new_account(app)
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        assert httpx.post(url, json=body(), headers={"x-api-key": acct.api_key}).status_code == 200
        # point the running limiter at a port where nothing listens
        from adyton_limits.limiter import Counters

        svc = service(app)
        svc.counters = Counters(f"redis://127.0.0.1:{free_port()}", "x")
        r = httpx.post(url, json=body(), headers={"x-api-key": acct.api_key})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"


def test_redis_burst_beyond_the_pool_waits_for_a_connection(redis_limits):
    """200 simultaneous counter updates through a 3-connection pool: each
    waits for a free connection, none fails, and the count is exact."""
    from adyton_limits.limiter import Counters

    async def burst() -> list[int | BaseException]:
        counters = Counters(redis_limits["storage_uri"], redis_limits["key_prefix"], max_connections=3)
        try:
            return await counters.incr_many([("acct/burst", 60, 1)] * 200)
        finally:
            await counters.close()

    values = asyncio.run(burst())
    assert not [v for v in values if isinstance(v, BaseException)]
    assert sorted(values) == list(range(1, 201))


def test_a_failed_slot_release_is_retried_so_the_account_is_not_locked_out(make_app):
    """The storage fails the in-flight slot's release twice (a Redis blip):
    the release is retried in the background, and the account's one
    concurrent slot is free again instead of blocked until its lease runs out."""
    app = make_app(tiers={1: tier(concurrent_requests=1)})
    acct = new_account(app)
    with ServerThread(app) as server:
        counters = service(app).counters
        real_release, failures = counters.slot_release, []

        async def flaky_release(key, member):
            if len(failures) < 2:
                failures.append(key)
                raise ConnectionError("storage unreachable")
            return await real_release(key, member)

        counters.slot_release = flaky_release
        url, headers = server.base_url + "/t/generate", {"x-api-key": acct.api_key}
        assert httpx.post(url, json=body(max_tokens=2), headers=headers).status_code == 200
        assert len(failures) == 1  # the release failed; the slot is still taken
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(url, json=body(max_tokens=2), headers=headers)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.json()["err"]["code"] == "concurrency_limit_exceeded"
            time.sleep(0.1)
        assert r.status_code == 200 and len(failures) == 2
    # no usage lost: both answered requests are in the ledger
    rows = service(app).store.usage(acct.account.id)
    assert sum(r["requests"] for r in rows if r["outcome"] == "ok") == 2
