"""A backend that declares ``runs_inline``: its jobs run on the event loop
(no engine thread), with the queue's promises unchanged — a long generation
runs in slices and lets the loop serve others, 429 when the line is full,
503 past ``max_wait_s``, a client that leaves stops it within a step, and
every reservation settled exactly once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from adyton import (
    Credentials,
    FinishReason,
    GenerationRequest,
    Limiter,
    Reservation,
    ServerBusy,
    ServiceUnavailable,
    hookimpl,
)
from adyton.testing import ScriptedBackend

KEY = Credentials(kind="none", wire_format="test")


class Ledger(Limiter):
    name = "ledger"

    def __init__(self) -> None:
        self.reserved = 0
        self.settled: list[tuple[int, str]] = []

    async def reserve(self, principal, cost):
        self.reserved += 1
        return Reservation(principal=principal, cost=cost)

    async def settle(self, reservation, usage, outcome):
        self.settled.append((usage.completion_tokens, outcome))


class LedgerPlugin:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.ledger)


class ThreadRecorder(ScriptedBackend):
    """Records the thread each ``generate`` step runs on."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.threads: set[str] = set()

    def generate(self, prompt, step, max_tokens, cancelled):
        for piece in super().generate(prompt, step, max_tokens, cancelled):
            self.threads.add(threading.current_thread().name)
            yield piece


def request(max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(prompt="hi", max_tokens=max_tokens, temperature=0)


def long_backend(**kw) -> ScriptedBackend:
    # never ends by itself: a generation runs max_tokens steps
    return ScriptedBackend(["a"], eos_at_end=False, runs_inline=True, context_length=30000, **kw)


def test_a_backend_that_sleeps_cannot_run_inline():
    with pytest.raises(ValueError, match="cannot run inline"):
        ScriptedBackend(delay_s=0.01, runs_inline=True)


@pytest.mark.parametrize("inline", [True, False])
async def test_same_result_on_the_loop_as_on_an_engine_thread(make_app, inline):
    backend = ThreadRecorder(script=["Hello", ",", " world", "!"], runs_inline=inline)
    ledger = Ledger()
    app = make_app(backend, plugins=[LedgerPlugin(ledger)])
    async with app.test_app():
        kernel = app.extensions["adyton"]
        assert kernel.queues["scripted"].inline is inline
        result = await (await kernel.pipeline.submit(request(), KEY)).result()
    assert result.choices[0].text == "Hello, world!"
    assert result.choices[0].finish_reason is FinishReason.STOP
    assert result.usage.completion_tokens == 4
    assert ledger.settled == [(4, "ok")]
    on_loop = backend.threads == {threading.main_thread().name}
    assert on_loop is inline


async def test_a_long_inline_generation_lets_the_loop_serve_others(make_app):
    backend = long_backend()
    app = make_app(backend)
    async with app.test_app():
        kernel = app.extensions["adyton"]
        generation = await kernel.pipeline.submit(request(max_tokens=20000), KEY)
        ticks = 0
        while not generation._task.done():  # the loop runs between slices of the generation
            ticks += 1
            await asyncio.sleep(0)
        result = await generation.result()
    assert result.usage.completion_tokens == 20000
    assert ticks > 1


async def test_inline_queue_429_503_and_a_client_that_leaves(make_app):
    backend = long_backend()
    ledger = Ledger()
    app = make_app(backend, plugins=[LedgerPlugin(ledger)],
                   settings={"queue": {"max_waiting": 1, "max_wait_s": 0.001}})
    async with app.test_app():
        kernel = app.extensions["adyton"]
        queue = kernel.queues["scripted"]
        running = await kernel.pipeline.submit(request(max_tokens=20000), KEY)
        await asyncio.sleep(0)  # its task submits the job, which runs its first slice
        assert queue.running == 1
        waiting = await kernel.pipeline.submit(request(max_tokens=4), KEY)
        await asyncio.sleep(0)
        assert queue.waiting == 1
        with pytest.raises(ServerBusy):  # one running, one waiting: the line is full
            await kernel.pipeline.submit(request(max_tokens=4), KEY)
        # the client of the running generation leaves: it stops within a step
        await asyncio.sleep(0.01)
        await running.aclose()
        assert queue.running == 0
        # the waiting one could not start within 1 ms: 503 with Retry-After
        with pytest.raises(ServiceUnavailable) as refused:
            await waiting.result()
        assert refused.value.retry_after >= 1
        # and the engine takes the next request at once
        after = await (await kernel.pipeline.submit(request(max_tokens=4), KEY)).result()
    assert after.usage.completion_tokens == 4
    settled = {outcome: tokens for tokens, outcome in ledger.settled}
    assert len(ledger.settled) == 3 and set(settled) == {"cancelled", "rejected", "ok"}
    assert 0 < settled["cancelled"] < 20000  # what it produced before it stopped
    assert settled["rejected"] == 0 and settled["ok"] == 4
    assert ledger.reserved == 3  # the 429 was refused before its reservation
