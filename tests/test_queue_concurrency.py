"""The engine queue's promises for a backend that runs N generations at once
(``Backend.max_concurrency``; a batching engine's slots), over a real socket:
N run together, the waiting line is still bounded (429), a wait past
``queue.max_wait_s`` is still a 503 with a Retry-After that counts N engine
threads, and a client that goes away frees its place for the next waiting
request. (N = 1 is ``test_queue_and_disconnect.py``.)"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from adyton.queue import EngineQueue
from adyton.testing import ScriptedBackend, ServerThread

CHAT = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
N = 3


def post(base, body, timeout=30.0):
    return httpx.post(base + "/t/generate", json=body, timeout=timeout)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_n_run_at_once_and_the_waiting_line_stays_bounded(make_app):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.02, max_concurrency=N)
    app = make_app(backend, settings={"queue": {"max_waiting": 1, "max_wait_s": 30}})
    queue = app.extensions["adyton"].queues["scripted"]
    with ServerThread(app) as server:
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(server.base_url, {**CHAT, "max_tokens": 60})))
                   for _ in range(N + 1)]
        for t in threads:
            t.start()
        assert _wait_for(lambda: queue.running == N and queue.waiting == 1)
        refused = post(server.base_url, {**CHAT, "max_tokens": 1})
        for t in threads:
            t.join()
    assert backend.max_parallel_seen == N
    assert refused.status_code == 429 and refused.json()["err"]["code"] == "server_busy"
    assert int(refused.headers["Retry-After"]) >= 1
    assert [r.status_code for r in results] == [200] * (N + 1)


def test_a_wait_past_the_deadline_is_503_with_retry_after(make_app):
    backend = ScriptedBackend(["a"] * 100, delay_s=0.02, max_concurrency=N)
    app = make_app(backend, settings={"queue": {"max_waiting": 4, "max_wait_s": 0.4}})
    queue = app.extensions["adyton"].queues["scripted"]
    with ServerThread(app) as server:
        slow = [threading.Thread(target=post, args=(server.base_url, {**CHAT, "max_tokens": 90}))
                for _ in range(N)]
        for t in slow:
            t.start()
        assert _wait_for(lambda: queue.running == N)
        r = post(server.base_url, {**CHAT, "max_tokens": 1})
        for t in slow:
            t.join()
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1


def test_retry_after_counts_the_engine_threads():
    one, four = EngineQueue("a", concurrency=1), EngineQueue("b", concurrency=4)
    for queue in (one, four):
        queue._service_s = 8.0
        queue._running = queue.concurrency
    # three jobs ahead plus the running ones: 4 jobs of 8 s on one engine;
    # 7 jobs shared by four engines, 1.75 rounds
    assert one.estimate_wait_s(3) == 32
    assert four.estimate_wait_s(3) == 14


def _raw_stream(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /t/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_a_disconnect_frees_a_place_for_the_next_waiting_request(make_app):
    step = 0.02
    backend = ScriptedBackend(["a"] * 1000, delay_s=step, max_concurrency=N)
    app = make_app(backend, settings={"queue": {"max_waiting": 4, "max_wait_s": 30}})
    queue = app.extensions["adyton"].queues["scripted"]
    with ServerThread(app) as server:
        socks = [_raw_stream(server.port, {**CHAT, "max_tokens": 900, "stream": True}) for _ in range(N)]
        assert _wait_for(lambda: queue.running == N)
        waiting = []
        t = threading.Thread(target=lambda: waiting.append(post(server.base_url, {**CHAT, "max_tokens": 2})))
        t.start()
        assert _wait_for(lambda: queue.waiting == 1)
        socks[0].close()
        gone = time.monotonic()
        t.join(10)
        assert waiting and waiting[0].status_code == 200
        assert time.monotonic() - gone < 50 * step
        assert queue.running == N - 1  # the other two still run
        for sock in socks[1:]:
            sock.close()
        assert _wait_for(lambda: queue.running == 0)
