"""Clients that go away (issue 15, item 4), over a real hypercorn socket with
adyton-limits counting: a request whose client leaves while it waits for the
engine leaves the queue, is charged only what was produced (nothing: it never
ran) and gives its account's concurrency slot back; a stream whose client
leaves mid-generation stops within a few token steps and is charged the
tokens it produced. Streaming (OpenAI chat and legacy completions, which
wait for the engine before sending their headers) and non-streaming (OpenAI,
Axiom)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from faults_helpers import (
    kernel_of,
    ledger,
    limits_app,
    new_account,
    raw_post,
    serving,
    tier,
    wait_for,
)
from quart import Blueprint, Response

from adyton import (
    Credentials,
    GenerationRequest,
    WireFormat,
    create_app,
    current_kernel,
    default_error_response,
    hookimpl,
)
from adyton.testing import BackendPlugin, ScriptedBackend
from adyton_limits import service_for

STEP = 0.02
MESSAGES = [{"role": "user", "content": "hi"}]


def _request(wire: str, acct, stream: bool, max_tokens: int) -> tuple[str, dict, dict]:
    """(path, body, headers) of one request on ``wire`` for ``acct``."""
    auth = {"Authorization": f"Bearer {acct.api_key}"}
    if wire == "openai-chat":
        return "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}, auth
    if wire == "openai-completions":
        return "/v1/completions", {"prompt": "hi", "max_tokens": max_tokens, "stream": stream}, auth
    assert not stream  # Axiom answers in one piece; its cap is axiom.max_tokens
    return "/api/chat", {"model": "scripted-model", "sessionId": acct.account_number,
                         "system_prompt": "", "messages": MESSAGES}, {}


CASES = [("openai-chat", True), ("openai-completions", True), ("openai-chat", False), ("axiom", False)]


@pytest.mark.parametrize("wire,stream", CASES)
def test_client_leaving_while_queued_frees_queue_quota_and_slot(tmp_path, wire, stream):
    backend = ScriptedBackend(["a"] * 400, delay_s=STEP, eos_at_end=False)
    app = limits_app(tmp_path / "home", backend, tiers={1: tier(concurrent_requests=2)},
                     settings={"axiom": {"max_tokens": 300}})
    kernel = kernel_of(app)
    acct = new_account(app)
    db = tmp_path / "home" / "adyton.sqlite3"  # the kernel database
    with serving(app) as server:
        base = server.base_url
        busy = {}
        hold = threading.Thread(target=lambda: busy.setdefault("r", httpx.post(
            base + "/v1/completions", json={"prompt": "busy", "max_tokens": 150},
            headers={"Authorization": f"Bearer {acct.api_key}"}, timeout=60)))
        hold.start()
        assert backend.running.wait(10)
        path, body, headers = _request(wire, acct, stream, 300)
        sock = raw_post(server.port, path, body, headers)
        queue = kernel.queues["scripted"]
        wait_for(lambda: queue.waiting == 1, what="the request to queue")
        sock.close()  # the client leaves before any header arrives
        wait_for(lambda: queue.waiting == 0, timeout=5, what="the abandoned request to leave the queue")
        wait_for(lambda: len(ledger(db, acct.account.id)) == 1, timeout=5, what="its ledger row")
        row = ledger(db, acct.account.id)[0]
        assert row["outcome"] == "cancelled" and row["completion_tokens"] == 0
        # its concurrency slot is free: with the busy request still running,
        # another request of the same account (2 slots) is admitted
        assert backend.running.is_set()
        r = httpx.post(base + "/v1/completions", json={"prompt": "next", "max_tokens": 1},
                       headers={"Authorization": f"Bearer {acct.api_key}"}, timeout=60)
        assert r.status_code == 200, r.text
        hold.join(60)
    assert busy["r"].status_code == 200
    assert backend.generations == 2  # the abandoned request never ran
    outcomes = [r["outcome"] for r in ledger(db, acct.account.id)]
    assert sorted(outcomes) == ["cancelled", "ok", "ok"]


@pytest.mark.parametrize("wire", ["openai-chat", "openai-completions"])
def test_client_leaving_mid_stream_stops_and_is_charged_what_was_produced(tmp_path, wire):
    backend = ScriptedBackend(["a"] * 400, delay_s=STEP, eos_at_end=False)
    app = limits_app(tmp_path / "home", backend, tiers={1: tier(concurrent_requests=1)})
    acct = new_account(app)
    db = tmp_path / "home" / "adyton.sqlite3"  # the kernel database
    with serving(app) as server:
        path, body, headers = _request(wire, acct, True, 300)
        sock = raw_post(server.port, path, body, headers)
        received = b""
        while received.count(b"data:") < 6:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        sock.close()
        gone = time.monotonic()
        wait_for(lambda: not backend.running.is_set(), timeout=5, what="the engine to stop")
        assert time.monotonic() - gone < 2.0
        wait_for(lambda: len(ledger(db, acct.account.id)) == 1, timeout=5, what="its ledger row")
        row = ledger(db, acct.account.id)[0]
        assert row["outcome"] == "cancelled"
        assert 5 <= row["completion_tokens"] < 300
        # the one concurrency slot is free again
        r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "next", "max_tokens": 1},
                       headers={"Authorization": f"Bearer {acct.api_key}"}, timeout=30)
        assert r.status_code == 200, r.text


class _CarelessWire(WireFormat):
    """A wire format whose stream forgets its generation (it streams ticks
    and never closes it): the kernel must still stop that generation once
    the server is done with the request."""

    name = "careless"
    url_prefixes = ("/careless/",)

    def __init__(self):
        self._bp = Blueprint("careless", __name__)
        self._bp.add_url_rule("/careless/stream", "stream", self.stream, methods=["POST"])

    @property
    def blueprint(self):
        return self._bp

    def render_error(self, error):
        return default_error_response(error)

    async def stream(self):
        request = GenerationRequest(prompt="hi", max_tokens=300, stream=True)
        generation = await current_kernel().pipeline.submit(request, Credentials(wire_format=self.name))
        await generation.wait_started()

        async def ticks():
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.05)

        return Response(ticks(), content_type="text/plain")


class _CarelessPlugin:
    __name__ = "careless-wire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(_CarelessWire())


def test_kernel_stops_a_generation_its_finished_request_left_running(tmp_path):
    backend = ScriptedBackend(["a"] * 400, delay_s=STEP, eos_at_end=False)
    app = create_app(settings={"home": str(tmp_path / "home")}, load_entrypoints=False,
                     plugins=[_CarelessPlugin(), BackendPlugin(backend)])
    with serving(app) as server:
        sock = raw_post(server.port, "/careless/stream", {})
        received = b""
        while b"tick" not in received:
            received += sock.recv(65536)
        assert backend.running.is_set()
        sock.close()
        gone = time.monotonic()
        wait_for(lambda: not backend.running.is_set(), timeout=5, what="the orphaned generation to stop")
        assert time.monotonic() - gone < 2.0  # not the 6 s its 300 tokens take


@pytest.mark.slow
def test_real_model_abandoned_streams_do_not_lock_a_tier_1_account_out(tmp_path):
    """The issue's own scenario, on the real default model: keep the engine
    busy, queue three ``stream: true, max_tokens: 300`` requests of a tier-1
    account (4 concurrent slots: all taken now) and close their sockets
    before any header arrives. They leave the queue, are charged nothing,
    and the account's next request is admitted (before the fix: 429
    concurrency_limit_exceeded until all three had run for nobody)."""
    from hostile_helpers import full_app, start_stack

    stack = start_stack(full_app(tmp_path / "home"), tier=1)
    try:
        acct_id = service_for(stack.kernel).store.by_api_key(stack.api_key).id
        db = tmp_path / "home" / "adyton.sqlite3"  # the kernel database
        queue = next(iter(stack.kernel.queues.values()))
        chat = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
        busy = {}
        hold = threading.Thread(target=lambda: busy.setdefault("r", httpx.post(
            stack.url + "/v1/chat/completions", headers=stack.auth(), timeout=300,
            json={"messages": chat, "max_tokens": 120, "min_tokens": 120, "temperature": 0})))
        hold.start()
        wait_for(lambda: queue.running == 1, timeout=60, what="the busy request to start")
        socks = [raw_post(stack.server.port, "/v1/chat/completions",
                          {"messages": chat, "max_tokens": 300, "stream": True}, stack.auth())
                 for _ in range(3)]
        wait_for(lambda: queue.waiting == 3, timeout=30, what="three streams to queue")
        for sock in socks:
            sock.close()
        wait_for(lambda: queue.waiting == 0, timeout=10, what="the abandoned streams to leave the queue")
        wait_for(lambda: len(ledger(db, acct_id)) == 3, timeout=10, what="their ledger rows")
        assert all(row["outcome"] == "cancelled" and row["completion_tokens"] == 0
                   for row in ledger(db, acct_id))
        r = httpx.post(stack.url + "/v1/chat/completions", headers=stack.auth(), timeout=300,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        hold.join(300)
        assert busy["r"].status_code == 200
        assert busy["r"].json()["usage"]["completion_tokens"] == 120
    finally:
        stack.server.stop()
