"""adyton in front of another adyton (kernel + adyton-openai + a scripted
backend) as the remote engine: pass-through, streaming token by token,
balancing, retry before the first token, a replica killed mid-burst,
cancellation reaching the upstream, and the upstream's usage settling the
account's reservation."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from upstream_helpers import FaultServer, chat, metric, sse_events

import adyton_limits
from adyton.testing import ScriptedBackend

SCRIPT = ["Hello", ",", " world", "!"]


def _models(*urls, **opts):
    return {"remote": {"replicas": list(urls), "upstream_model": "scripted-model", **opts}}


def test_chat_and_completions_pass_through_with_the_upstream_usage(upstreams, front):
    up = upstreams(ScriptedBackend(SCRIPT))
    proxy = front(_models(up.base_url))
    direct = httpx.post(up.base_url + "/v1/chat/completions", json=chat(model="scripted-model")).json()
    r = httpx.post(proxy.base_url + "/v1/chat/completions", json=chat(temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "remote"
    assert body["choices"][0]["message"]["content"] == "Hello, world!"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == direct["usage"]  # the engine's count, not the proxy's estimate
    r = httpx.post(proxy.base_url + "/v1/completions", json={"model": "remote", "prompt": "say hi", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "Hello,"
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 2
    models = httpx.get(proxy.base_url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["remote"]


def test_streaming_is_passed_through_token_by_token(upstreams, front):
    engine = ScriptedBackend(SCRIPT, delay_s=0.3)
    up = upstreams(engine)
    proxy = front(_models(up.base_url))
    with httpx.stream("POST", proxy.base_url + "/v1/chat/completions",
                      json=chat(stream=True, stream_options={"include_usage": True}), timeout=30) as r:
        assert r.status_code == 200
        texts, still_running_at_first = [], None
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event["choices"]:
                content = choice["delta"].get("content")
                if content:
                    if still_running_at_first is None:
                        # the first token reached the client while the engine had three to go
                        still_running_at_first = engine.running.is_set()
                    texts.append(content)
            if event.get("usage"):
                usage = event["usage"]
    assert texts == SCRIPT  # one delta per upstream token
    assert still_running_at_first is True
    assert usage["completion_tokens"] == 4


def test_least_outstanding_requests_spread_a_burst_over_both_replicas(upstreams, front):
    a, b = ScriptedBackend(SCRIPT, delay_s=0.05), ScriptedBackend(SCRIPT, delay_s=0.05)
    proxy = front(_models(upstreams(a).base_url, upstreams(b).base_url))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.post(proxy.base_url + "/v1/chat/completions", json=chat(),
                                                   timeout=60).status_code, range(8)))
    assert codes == [200] * 8
    assert a.generations + b.generations == 8
    assert a.generations >= 2 and b.generations >= 2


def test_a_request_failing_before_its_first_token_is_retried_on_another_replica(upstreams, front):
    up = upstreams(ScriptedBackend(SCRIPT))
    with FaultServer("500") as broken:
        proxy = front(_models(broken.url, up.base_url), health_interval_s=60)
        for _ in range(4):
            r = httpx.post(proxy.base_url + "/v1/chat/completions", json=chat(), timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Hello, world!"
        # tried once, then out of service for its back-off
        assert 1 <= len(broken.bodies) <= 2
        assert metric(proxy.base_url, "adyton_upstream_retries_total", model="remote") >= 1
        assert metric(proxy.base_url, "adyton_upstream_replica_up", replica=broken.url) == 0


def test_cancellation_reaches_the_upstream(upstreams, front):
    engine = ScriptedBackend(SCRIPT, delay_s=0.2, eos_at_end=False)
    up = upstreams(engine)
    proxy = front(_models(up.base_url))
    with httpx.stream("POST", proxy.base_url + "/v1/chat/completions",
                      json=chat(stream=True, max_tokens=200), timeout=30) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content":""' not in line:
                break  # the first token: leave
    deadline = time.monotonic() + 20
    while metric(up.base_url, "adyton_requests_total", outcome="cancelled") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    # the upstream saw its client (the proxy) go away, and stopped long before 200 tokens
    assert metric(up.base_url, "adyton_requests_total", outcome="cancelled") == 1
    assert metric(up.base_url, "adyton_completion_tokens_total") < 100
    assert not engine.running.is_set()


def test_a_client_leaving_before_the_first_token_hangs_up_on_a_stalled_upstream(front):
    # an engine that queues or prefills sends its headers, then nothing: the
    # proxy's read is blocked, and must still be ended when the client leaves
    with FaultServer("stalled", silence_s=20) as engine:
        proxy = front(_models(engine.url), read_timeout_s=30, health_interval_s=60)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proxy.base_url + "/v1/chat/completions", json=chat(stream=True), timeout=httpx.Timeout(
                10, read=1))
        deadline = time.monotonic() + 10
        while engine.hangups < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.hangups == 1 and len(engine.bodies) == 1
        # the client left: that is no failure of the replica
        assert metric(proxy.base_url, "adyton_upstream_replica_up", replica=engine.url) == 1
        assert metric(proxy.base_url, "adyton_upstream_errors_total", replica=engine.url) == 0


def _limits(front_factory, tmp_path, *urls, **opts):
    proxy = front_factory(_models(*urls, **opts), plugins=[adyton_limits])
    key = (tmp_path / "front-0" / "limits" / "admin.key").read_text().strip()
    admin = httpx.Client(base_url=proxy.base_url + "/admin", headers={"Authorization": f"Bearer {key}"})
    account = admin.post("/accounts", json={"tier": 5}).json()
    return proxy, admin, account


def test_the_upstream_usage_settles_the_reservation(upstreams, front, tmp_path):
    up = upstreams(ScriptedBackend(SCRIPT))
    proxy, admin, account = _limits(front, tmp_path, up.base_url)
    auth = {"Authorization": f"Bearer {account['api_key']}"}
    seen = []
    for body in (chat(), chat("a longer question with more words", stream=True,
                              stream_options={"include_usage": True})):
        r = httpx.post(proxy.base_url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        usage = (r.json()["usage"] if not body.get("stream")
                 else next(e for e in sse_events(r) if e.get("usage"))["usage"])
        seen.append(usage)
    rows = admin.get("/usage", params={"account": account["id"]}).json()["usage"]
    assert rows == [{"account_id": account["id"], "outcome": "ok", "requests": 2,
                     "prompt_tokens": sum(u["prompt_tokens"] for u in seen),
                     "completion_tokens": sum(u["completion_tokens"] for u in seen)}]
    # the upstream's own count, far below the proxy's upper-bound estimate of the prompt
    assert seen[0]["prompt_tokens"] < len("<user>hi there")
    admin.close()


def test_a_replica_killed_mid_burst_loses_no_answered_usage(upstreams, front, tmp_path):
    # ten tokens of 0.3 s each: longer than the 2 s its server gives in-flight
    # streams when it stops, so A's requests are cut mid-stream
    a, b = (ScriptedBackend(SCRIPT, delay_s=0.3, eos_at_end=False, max_concurrency=6) for _ in range(2))
    up_a, up_b = upstreams(a), upstreams(b)
    proxy, admin, account = _limits(front, tmp_path, up_a.base_url, up_b.base_url)
    auth = {"Authorization": f"Bearer {account['api_key']}"}

    def one(_):
        r = httpx.post(proxy.base_url + "/v1/chat/completions", json=chat(max_tokens=10), headers=auth,
                       timeout=60)
        return r.status_code, (r.json().get("usage") if r.status_code == 200 else r.json()["error"])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        first = [pool.submit(one, i) for i in range(8)]
        while a.generations == 0:
            time.sleep(0.02)
        up_a.stop()  # replica A goes away mid-burst
        results = [f.result() for f in first]
    after = [one(i) for i in range(4)]  # the survivor carries on
    assert all(code == 200 for code, _ in after), after
    answered = [u for code, u in results + after if code == 200]
    failed = [e for code, e in results if code != 200]
    assert all(e["code"] in ("upstream_error", "upstream_timeout") and "remote" in e["message"] for e in failed)
    assert len(answered) >= 8 and b.generations >= 4
    rows = {r["outcome"]: r for r in admin.get("/usage", params={"account": account["id"]}).json()["usage"]}
    assert rows["ok"]["requests"] == len(answered)
    assert rows["ok"]["completion_tokens"] == sum(u["completion_tokens"] for u in answered)
    assert rows["ok"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in answered)
    admin.close()
