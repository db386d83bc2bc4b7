"""Engine queue behaviour over a real hypercorn socket: 429 when the queue is
full, 503 + Retry-After past the wait deadline, and a client disconnect that
frees the engine within one token step."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from adyton.testing import ScriptedBackend, ServerThread

CHAT = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def post(base, body, timeout=30.0):
    return httpx.post(base + "/t/generate", json=body, timeout=timeout)


def test_queue_full_gives_429_server_busy(make_app):
    backend = ScriptedBackend(["a"] * 50, delay_s=0.05, eos_at_end=True)
    app = make_app(backend, settings={"queue": {"max_waiting": 1, "max_wait_s": 30}})
    with ServerThread(app) as server:
        results = {}

        def call(i):
            results[i] = post(server.base_url, {**CHAT, "max_tokens": 20})

        first = threading.Thread(target=call, args=(0,))
        first.start()
        assert backend.running.wait(10)
        second = threading.Thread(target=call, args=(1,))
        second.start()
        # wait until the second request is queued
        deadline = time.monotonic() + 5
        kernel = app.extensions["adyton"]
        while kernel.queues["scripted"].waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = post(server.base_url, {**CHAT, "max_tokens": 1})
        first.join()
        second.join()
    assert third.status_code == 429
    body = third.json()["err"]
    assert body["type"] == "rate_limit_error" and body["code"] == "server_busy"
    assert "server busy" in body["message"]
    assert int(third.headers["Retry-After"]) >= 1
    assert results[0].status_code == 200 and results[1].status_code == 200


def test_wait_deadline_gives_503_with_retry_after(make_app):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.05)
    app = make_app(backend, settings={"queue": {"max_waiting": 4, "max_wait_s": 0.5}})
    with ServerThread(app) as server:
        slow = threading.Thread(target=post, args=(server.base_url, {**CHAT, "max_tokens": 60}))
        slow.start()
        assert backend.running.wait(10)
        started = time.monotonic()
        r = post(server.base_url, {**CHAT, "max_tokens": 1})
        waited = time.monotonic() - started
        slow.join()
    assert r.status_code == 503
    assert r.json()["err"]["type"] == "service_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert 0.4 < waited < 5


def test_streaming_request_that_times_out_in_queue_is_a_real_503(make_app):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.05)
    app = make_app(backend, settings={"queue": {"max_waiting": 4, "max_wait_s": 0.3}})
    with ServerThread(app) as server:
        slow = threading.Thread(target=post, args=(server.base_url, {**CHAT, "max_tokens": 40}))
        slow.start()
        assert backend.running.wait(10)
        r = post(server.base_url, {**CHAT, "max_tokens": 1, "stream": True})
        slow.join()
    assert r.status_code == 503
    assert "Retry-After" in r.headers


def _raw_request(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /t/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_stops_generation_and_frees_the_engine(make_app, stream):
    step = 0.05
    backend = ScriptedBackend(["a"] * 1000, delay_s=step)
    app = make_app(backend)
    kernel = app.extensions["adyton"]
    with ServerThread(app) as server:
        sock = _raw_request(server.port, {**CHAT, "max_tokens": 900, "stream": stream})
        assert backend.running.wait(10)
        time.sleep(5 * step)
        sock.close()  # the client goes away mid-generation
        gone = time.monotonic()
        # the engine is free again within a few token steps
        while backend.running.is_set() and time.monotonic() - gone < 5:
            time.sleep(0.005)
        freed_after = time.monotonic() - gone
        assert not backend.running.is_set()
        assert freed_after < 10 * step, freed_after
        # and the next request starts at once
        started = time.monotonic()
        r = post(server.base_url, {**CHAT, "max_tokens": 2})
        assert r.status_code == 200
        assert time.monotonic() - started < 1.0
        assert kernel.queues["scripted"].running == 0


def test_disconnect_while_queued_leaves_the_queue(make_app):
    backend = ScriptedBackend(["a"] * 200, delay_s=0.02)
    app = make_app(backend, settings={"queue": {"max_waiting": 1, "max_wait_s": 30}})
    kernel = app.extensions["adyton"]
    with ServerThread(app) as server:
        first = threading.Thread(target=post, args=(server.base_url, {**CHAT, "max_tokens": 100}))
        first.start()
        assert backend.running.wait(10)
        sock = _raw_request(server.port, {**CHAT, "max_tokens": 5})
        deadline = time.monotonic() + 5
        while kernel.queues["scripted"].waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kernel.queues["scripted"].waiting == 1
        sock.close()
        deadline = time.monotonic() + 5
        while kernel.queues["scripted"].waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kernel.queues["scripted"].waiting == 0
        first.join()
    assert backend.generations == 1  # the abandoned request never ran
