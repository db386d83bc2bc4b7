"""Token reservation: worst case reserved, refunds after short answers,
cancelled streams settle."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from limits_helpers import DATABASES, body, new_account, service, tier

from adyton.testing import ScriptedBackend, ServerThread


class GatedBackend(ScriptedBackend):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate = threading.Event()

    def generate(self, prompt, step, max_tokens, cancelled):
        self.gate.wait(20)
        yield from super().generate(prompt, step, max_tokens, cancelled)


PROMPT = 3  # "<user>hi there\n<assistant>" is 3 tokens for ScriptedBackend


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_tokens_per_minute_never_exceeded_and_refunds(make_app):
    backend = GatedBackend(max_concurrency=10)
    app = make_app(backend, tiers={1: tier(tokens_per_minute=1000)})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}

    async def run(url):
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20), timeout=30) as client:
            tasks = [asyncio.create_task(client.post(url, json=body(max_tokens=300), headers=headers))
                     for _ in range(10)]
            while sum(t.done() for t in tasks) < 7:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            assert sum(t.done() for t in tasks) == 7  # 3 x 303 fit in 1000, a 4th does not
            backend.gate.set()
            return await asyncio.gather(*tasks)

    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        responses = asyncio.run(run(url))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) == 3 and len(refused) == 7
        for r in refused:
            assert r.json()["err"]["code"] == "rate_limit_exceeded"
            assert "tokens/minute" in r.json()["err"]["message"]
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert r.headers["x-ratelimit-limit-tokens"] == "1000"
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < 303
        used = sum(r.json()["usage"]["total_tokens"] for r in ok)
        assert used == 3 * (PROMPT + 4)
        # the unused 3 x 296 tokens were given back: a new request sees them
        r = httpx.post(url, json=body(max_tokens=300), headers=headers)
        assert r.status_code == 200
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1000 - used - 303
        # a request that can never fit is refused without retry
        r = httpx.post(url, json=body(max_tokens=2000), headers=headers)
        assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
        assert r.json()["err"]["code"] == "request_exceeds_limit"
    rows = service(app).store.ledger(acct.account.id)
    assert len(rows) == 4 and all(row["reserved_tokens"] == 303 for row in rows)


@pytest.mark.parametrize("db_url", DATABASES, indirect=True)
def test_cancelled_stream_settles(make_app):
    backend = ScriptedBackend(("a", " b"), delay_s=0.05, eos_at_end=False)
    app = make_app(backend, tiers={1: tier(tokens_per_minute=10_000, concurrent_requests=1)})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}
    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        with httpx.Client(timeout=30) as client, \
                client.stream("POST", url, json=body(max_tokens=1000, stream=True), headers=headers) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if "text" in json.loads(line):
                    seen += 1
                if seen >= 3:
                    break
        # the client went away: the server stops and settles
        store = service(app).store
        deadline = time.monotonic() + 10
        while not store.ledger(acct.account.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        (row,) = store.ledger(acct.account.id)
        assert row["outcome"] == "cancelled"
        assert 3 <= row["completion_tokens"] < 1000
        spent = row["prompt_tokens"] + row["completion_tokens"]
        # concurrency slot released (limit 1) and unused tokens refunded
        r = httpx.post(url, json=body(max_tokens=10), headers=headers)
        assert r.status_code == 200, r.text
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 10_000 - spent - (PROMPT + 10)


def test_failed_queue_admission_gives_everything_back(make_app):
    """A request refused after reserve (engine queue timeout) settles as
    'rejected': request and tokens are both given back."""
    backend = GatedBackend(max_concurrency=1)
    app = make_app(backend, tiers={1: tier(requests_per_minute=5, tokens_per_minute=10_000)},
                   settings={"queue": {"max_waiting": 5, "max_wait_s": 0.3}})
    acct = new_account(app)
    headers = {"x-api-key": acct.api_key}

    async def run(url):
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(url, json=body(max_tokens=5), headers=headers))
            await asyncio.sleep(0.3)
            second = await client.post(url, json=body(max_tokens=5), headers=headers)  # times out in the queue
            backend.gate.set()
            return await first, second

    with ServerThread(app) as server:
        url = server.base_url + "/t/generate"
        first, second = asyncio.run(run(url))
        assert first.status_code == 200 and second.status_code == 503
        r = httpx.post(url, json=body(max_tokens=5), headers=headers)
        assert r.headers["x-ratelimit-remaining-requests"] == "3"  # 5 - first - this one
    outcomes = sorted(row["outcome"] for row in service(app).store.ledger(acct.account.id))
    assert outcomes == ["ok", "ok", "rejected"]
