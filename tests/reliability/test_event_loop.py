"""The event loop is never blocked (issue 15, item 3): ``/health`` keeps
answering (p99 under 100 ms) while the largest prompt the body limit allows
is read, templated and tokenized, and while a burst of requests waits for
the engine. Real default model, the whole first-party stack, real sockets.

Probes are sent on a fixed schedule (every 20 ms) and each one's latency is
counted from when it was due, not from when it was sent: a probe that could
not even be sent because the previous one hung counts the whole wait, as a
client arriving then would have seen it."""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adyton.testing import free_port, require_model

INTERVAL_S = 0.02
#: the target is 100 ms (what an idle machine shows); the bound leaves room
#: for a loaded shared CI machine, where the OS alone delays a thread by
#: hundreds of ms, and still catches a blocked loop (3-15 s per big prompt
#: before issue 15)
P99_LIMIT_S = 1.0


SERVE = Path(__file__).with_name("hostile_serve.py")


@dataclass
class Served:
    url: str
    api_key: str
    account_number: str
    model: str
    max_body_bytes: int

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real model behind the whole stack, in its own process (the
    measurement must not share a GIL with its own clients)."""
    require_model()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVE), str(port), str(tmp_path_factory.mktemp("home"))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        line = proc.stdout.readline() if ready else ""
        if not line:
            pytest.fail(f"the server did not start (exit code {proc.poll()})")
        yield Served(url=f"http://127.0.0.1:{port}", **json.loads(line))
    finally:
        proc.kill()
        proc.wait(30)


class HealthProbe:
    """GET /health every ``INTERVAL_S`` on a thread; latencies from each
    probe's due time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            start = time.monotonic()
            i = 0
            while not self._stop.is_set():
                due = start + i * INTERVAL_S
                i += 1
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.statuses.add(client.get(self.url + "/health").status_code)
                self.latencies.append(time.monotonic() - due)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def summary(self) -> str:
        return (f"{len(self.latencies)} probes: median {statistics.median(self.latencies) * 1000:.1f} ms, "
                f"p99 {self.p99() * 1000:.1f} ms, max {max(self.latencies) * 1000:.1f} ms")


def _prose(chars: int) -> str:
    sentence = "The quick brown fox jumps over the lazy dog, and then it rests a while. "
    return (sentence * (chars // len(sentence) + 1))[:chars]


def test_health_answers_while_the_largest_prompts_are_prepared(real):
    # the largest the body limit lets in, and one of 500k characters (~125k
    # tokens: the backend tokenizes it to know it does not fit its 8192)
    prompts = [_prose(real.max_body_bytes - 2048), _prose(500_000)]
    bodies = []
    for prompt in prompts:
        bodies.append(("/v1/completions", {"prompt": prompt, "max_tokens": 4}, real.auth()))
        bodies.append(("/api/chat", {"model": real.model, "sessionId": real.account_number, "system_prompt": "",
                                     "messages": [{"role": "user", "content": prompt}]}, {}))
    with HealthProbe(real.url) as probe:
        for path, body, headers in bodies:
            payload = json.dumps(body).encode()
            assert len(payload) < real.max_body_bytes
            r = httpx.post(real.url + path, content=payload, timeout=300,
                           headers={"Content-Type": "application/json", **headers})
            # refused: far over the context (after reading, templating, tokenizing as needed)
            assert r.status_code == 400, r.text[:300]
    print(probe.summary())
    assert probe.statuses == {200}
    assert len(probe.latencies) >= 10
    assert probe.p99() < P99_LIMIT_S, probe.summary()


def test_health_answers_while_a_burst_is_queued(real):
    body = {"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24}

    def one(_):
        return httpx.post(real.url + "/v1/chat/completions", json=body, headers=real.auth(), timeout=300)

    with HealthProbe(real.url) as probe, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    print(probe.summary())
    assert [r.status_code for r in results] == [200] * 8, [r.text[:200] for r in results]
    assert probe.statuses == {200}
    assert len(probe.latencies) >= 10
    assert probe.p99() < P99_LIMIT_S, probe.summary()
