"""The engine queue: who may use an engine, in which order, for how long.

One queue per backend, with ``concurrency`` engine threads (1 for a local
engine). An admitted request becomes an ``EngineJob``; the engine threads take
jobs first-in first-out and run them back to back, so the engine never waits
for the event loop between two requests. At most ``max_waiting`` jobs wait
(one more is refused at once with 429 "server busy"); a job that cannot start
within ``max_wait_s`` is abandoned with 503 and a Retry-After estimated from
the measured service time and its position. A job whose client goes away
before it starts is simply dropped from the queue.

A backend that never blocks (``Backend.runs_inline``) gets an *inline* queue:
the same slots, waiting line, deadlines and refusals, but its jobs run on the
event loop instead of on engine threads: a job that finds a free slot starts
at once, inside ``submit``; a long one runs a slice of steps (tokens) per
loop pass, so the loop still answers others meanwhile. Handing a job to a
thread and its events back costs GIL transfers, thread wake-ups and loop
wake-ups per request: nothing next to a forward pass, but most of the
kernel's own time when the job itself takes microseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .errors import ServerBusy, ServiceUnavailable

log = logging.getLogger("adyton.queue")

_WAITING, _RUNNING, _ABANDONED, _DONE = "waiting", "running", "abandoned", "done"

#: an inline queue (``Backend.runs_inline``) runs a job's steps for up to this
#: many seconds per event-loop pass
INLINE_SLICE_S = 0.002


class LoopMailbox:
    """Calls from engine threads into the event loop, coalesced.

    ``loop.call_soon_threadsafe`` writes to the loop's self-pipe on every
    call; from an engine thread each such syscall drops and re-takes the GIL.
    The mailbox writes once per batch: while a drain is pending, more calls
    just queue up behind it."""

    __slots__ = ("_calls", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self._scheduled = False

    def _drain(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            fn(*args)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


_last_mailbox: LoopMailbox | None = None  # the common case: one serving loop


def mailbox_for(loop: asyncio.AbstractEventLoop) -> LoopMailbox:
    global _last_mailbox
    box = _last_mailbox
    if box is not None and box._loop is loop:
        return box
    box = _mailboxes.get(loop)
    if box is None:
        with _mailboxes_lock:
            box = _mailboxes.get(loop)
            if box is None:
                box = _mailboxes[loop] = LoopMailbox(loop)
    _last_mailbox = box
    return box


class EngineJob:
    """Blocking work for one request, run on an engine thread (on the event
    loop for an inline queue).

    ``work()`` runs on the engine thread; its return value or exception
    becomes the result of ``wait_done()``. With ``steps=True``, ``work()``
    returns an iterator that does the work a step at a time (e.g. a token per
    item; the items are ignored and the result is None): an engine thread
    runs every step, an inline queue a slice of steps per event-loop pass."""

    __slots__ = ("_deadline", "_done", "_loop", "_mailbox", "_waiters", "service_s", "state", "steps", "work")

    def __init__(self, work: Callable[[], Any], *, steps: bool = False) -> None:
        self.work = work
        self.steps = steps
        self.state = _WAITING
        self._loop = asyncio.get_running_loop()
        self._mailbox = mailbox_for(self._loop)
        self._done: asyncio.Future[Any] = self._loop.create_future()
        #: the futures ``wait_done`` callers wait on, resolved with ``_done``
        self._waiters: list[asyncio.Future[None]] = []
        self._deadline: asyncio.TimerHandle | None = None
        self.service_s = 0.0

    @property
    def started(self) -> bool:
        return self.state in (_RUNNING, _DONE)

    async def wait_done(self) -> Any:
        """The work's result. Raises ServiceUnavailable if the job could not
        start in time. If the caller is cancelled, the job keeps running:
        call ``EngineQueue.abandon`` or stop the work, then wait again.

        (As ``asyncio.shield(self._done)`` would, but the waiter is woken
        in the pass that resolves the job, not one pass later through the
        done future's callbacks.)"""
        done = self._done
        if not done.done():
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return done.result()

    # -- called on the engine thread -----------------------------------------

    def _run(self) -> tuple[Callable[[EngineJob, Any], None], Any]:
        """Run the work. Returns how to resolve the future, which the engine
        thread posts once the queue's books say the engine is free again."""
        t0 = time.monotonic()
        try:
            value = self.work()
            if self.steps:
                collections.deque(value, maxlen=0)  # every step, here
                value = None
            return _set_result, value
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            return _set_exception, exc
        finally:
            self.service_s = time.monotonic() - t0


def _set_result(job: EngineJob, value: Any) -> None:
    if not job._done.done():
        job._done.set_result(value)
        _wake(job)


def _set_exception(job: EngineJob, exc: BaseException) -> None:
    if not job._done.done():
        job._done.set_exception(exc)
        job._done.exception()  # (retrieved: a waiter gets it from wait_done, as shield() marked it)
        _wake(job)


def _wake(job: EngineJob) -> None:
    waiters, job._waiters = job._waiters, []
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class EngineQueue:
    def __init__(
        self,
        name: str,
        *,
        concurrency: int = 1,
        max_waiting: int = 16,
        max_wait_s: float = 60.0,
        inline: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        #: jobs run on the event loop (``Backend.runs_inline``), not on engine threads
        self.inline = inline
        self._pump: asyncio.Handle | None = None
        self._lock = threading.Condition()
        self._waiting: collections.deque[EngineJob] = collections.deque()
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._closing = False
        # exponential moving average of how long one job holds the engine
        self._service_s: float | None = None

    # -- introspection ------------------------------------------------------

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def mean_service_s(self) -> float:
        return self._service_s if self._service_s is not None else 5.0

    def estimate_wait_s(self, position: int) -> float:
        """Seconds until the job at ``position`` (0 = next) could start."""
        rounds = (position + self._running) / self.concurrency
        return max(1.0, math.ceil(rounds * self.mean_service_s))

    def _queued_behind_busy_engines(self) -> int:
        """Waiting jobs that no idle engine thread is about to take."""
        return len(self._waiting) - (self.concurrency - self._running)

    def _full(self) -> bool:
        return self._queued_behind_busy_engines() >= self.max_waiting

    def check_admission(self) -> None:
        """Raise ServerBusy if a new job could neither run nor wait."""
        if self._full():
            raise ServerBusy(
                "server busy: too many requests are waiting for the engine; retry with backoff",
                retry_after=self.estimate_wait_s(self._queued_behind_busy_engines()),
            )

    # -- submitting (event loop) --------------------------------------------

    def submit(self, job: EngineJob) -> int | None:
        """Queue ``job``. Returns its position among the jobs that must wait
        (0 = next), or None if an engine thread takes it at once (an inline
        queue with a free slot: it has already run its first slice of steps,
        or the whole job, here). Raises ServerBusy. A job still waiting after
        ``max_wait_s`` is abandoned and its ``wait_done()`` raises
        ServiceUnavailable with a Retry-After."""
        start_now = False
        with self._lock:
            self.check_admission()
            ahead = self._queued_behind_busy_engines()
            if self.inline:
                start_now = ahead < 0 and not self._waiting  # a free slot, nobody ahead
                if not start_now:
                    self._waiting.append(job)
                    self._schedule_inline(job._loop)
            else:
                self._waiting.append(job)
                self._ensure_threads()
                self._lock.notify()
        if start_now:
            self._start_inline(job)
            return None
        if ahead >= 0:
            job._deadline = job._loop.call_later(self.max_wait_s, self._expire, job)
            return ahead
        return None

    def _expire(self, job: EngineJob) -> None:
        position = self.abandon(job)
        if position is not None:
            _set_exception(job, ServiceUnavailable(
                f"the engine is busy: this request could not start within {self.max_wait_s:g} s",
                retry_after=self.estimate_wait_s(position),
            ))

    def abandon(self, job: EngineJob) -> int | None:
        """Drop a job that has not started; its position, or None if it has."""
        with self._lock:
            if job.state != _WAITING:
                return None
            try:
                position = self._waiting.index(job)
            except ValueError:  # pragma: no cover - waiting jobs are always queued
                position = 0
            else:
                del self._waiting[position]
            job.state = _ABANDONED
            return position

    # -- inline: jobs on the event loop ---------------------------------------

    def _schedule_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pump is None:
            self._pump = loop.call_soon(self._pump_inline, loop)

    def _pump_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Event loop: start the next waiting job if a slot is free (one per
        loop pass). A job whose ``max_wait_s`` went by while the jobs ahead
        of it ran is refused with 503 instead, as its timer would have."""
        self._pump = None
        while self._waiting and self._running < self.concurrency:
            job = self._waiting[0]
            deadline = job._deadline
            if deadline is not None:
                deadline.cancel()
                if deadline.when() <= loop.time():
                    self._expire(job)
                    continue
            self._waiting.popleft()
            self._start_inline(job)
            break
        if self._waiting and self._running < self.concurrency:
            self._schedule_inline(loop)

    def _start_inline(self, job: EngineJob) -> None:
        job.state = _RUNNING
        self._running += 1
        job.service_s = time.monotonic()  # (the start, until the job is done)
        try:
            value = job.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the job's waiter
            self._finish_inline(job, _set_exception, exc)
            return
        if job.steps:
            self._step_inline(job, iter(value))
        else:
            self._finish_inline(job, _set_result, value)

    def _step_inline(self, job: EngineJob, steps: Any) -> None:
        """Event loop: run ``job``'s steps for up to ``INLINE_SLICE_S``, then
        let the loop answer others before the next slice (a client that
        leaves meanwhile sets its ``cancelled``: the job stops within a step)."""
        end = time.perf_counter() + INLINE_SLICE_S
        try:
            for _ in steps:
                if time.perf_counter() >= end:
                    job._loop.call_soon(self._step_inline, job, steps)
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the job's waiter
            self._finish_inline(job, _set_exception, exc)
            return
        self._finish_inline(job, _set_result, None)

    def _finish_inline(self, job: EngineJob, resolve: Callable[[EngineJob, Any], None],
                       value: Any) -> None:
        job.service_s = time.monotonic() - job.service_s
        job.state = _DONE
        self._running -= 1
        self._record_service(job.service_s)
        resolve(job, value)
        if self._waiting:
            self._schedule_inline(job._loop)

    def _record_service(self, s: float) -> None:
        self._service_s = s if self._service_s is None else 0.7 * self._service_s + 0.3 * s

    # -- engine threads -------------------------------------------------------

    def _ensure_threads(self) -> None:
        """(Under the lock.) An engine thread leaves ``_threads`` when it ends."""
        self._closing = False
        while len(self._threads) < self.concurrency:
            thread = threading.Thread(target=self._engine_loop, daemon=True,
                                      name=f"adyton-engine-{self.name}-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def _engine_loop(self) -> None:
        try:
            self._take_jobs()
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._threads.remove(threading.current_thread())

    def _take_jobs(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._lock.wait()
                if self._closing and not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state = _RUNNING
                self._running += 1
            if job._deadline is not None:
                job._mailbox.post(job._deadline.cancel)
            resolve, value = job._run()
            with self._lock:
                job.state = _DONE
                self._running -= 1
                self._record_service(job.service_s)
            # only now: a client that has its answer must find the engine free
            job._mailbox.post(resolve, job, value)
            # nor keep it (its generation, prompt and request) while waiting for the next
            del job, resolve, value

    def close(self, timeout: float = 5.0) -> None:
        """Stop the engine threads once the queue is empty."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        with self._lock:
            self._threads = []
