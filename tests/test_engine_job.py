"""``EngineJob.wait_done`` on an engine thread: the result or the work's
exception; a waiter that is cancelled leaves the job running and its result
for the next waiter; several waiters all get it; and the waiter is woken in
the loop pass that resolves the job."""

from __future__ import annotations

import asyncio
import threading

import pytest

from adyton.queue import EngineJob, EngineQueue


@pytest.fixture
def queue():
    q = EngineQueue("test", concurrency=1)
    yield q
    q.close()


async def test_result_and_exception(queue):
    job = EngineJob(lambda: 42)
    queue.submit(job)
    assert await job.wait_done() == 42
    assert await job.wait_done() == 42  # (again: the same result)

    def fail():
        raise ValueError("boom")

    job = EngineJob(fail)
    queue.submit(job)
    with pytest.raises(ValueError, match="boom"):
        await job.wait_done()


async def test_a_cancelled_waiter_leaves_the_job_running(queue):
    release = threading.Event()

    def work():
        release.wait(5)
        return "done"

    job = EngineJob(work)
    queue.submit(job)
    first = asyncio.create_task(job.wait_done())
    others = [asyncio.create_task(job.wait_done()) for _ in range(2)]
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not job._done.done() and job.state == "running"
    release.set()
    assert await asyncio.gather(*others) == ["done", "done"]
    assert await job.wait_done() == "done"
    assert job._waiters == []


async def test_the_waiter_wakes_in_the_pass_that_resolves_the_job(queue):
    """The engine thread's hand-back (one mailbox drain) wakes the waiting
    task directly: it runs in the next loop pass, not two passes later as
    through a shield() of the done future."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    job = EngineJob(lambda: release.wait(5))
    queue.submit(job)
    waiter = asyncio.create_task(job.wait_done())
    await asyncio.sleep(0.05)
    passes = 0

    def count() -> None:
        nonlocal passes
        passes += 1
        if not waiter.done():
            loop.call_soon(count)

    resolved = loop.create_future()
    job._done.add_done_callback(lambda _: resolved.set_result(passes))
    loop.call_soon(count)
    release.set()
    await waiter
    assert passes - await resolved <= 1  # (2 through a shield)
