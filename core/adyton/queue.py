"""The engine queue: who may use an engine, in which order, for how long.

One queue per backend. ``concurrency`` requests run at once (1 for a local
engine); at most ``max_waiting`` wait behind them (one more is refused at once
with 429 "server busy"); a waiter that cannot start within ``max_wait_s`` is
refused with 503 and a Retry-After estimated from the measured service time
and its position. A waiter whose client goes away (its task is cancelled)
leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Callable

from .errors import ServerBusy, ServiceUnavailable


class EngineQueue:
    def __init__(
        self,
        name: str,
        *,
        concurrency: int = 1,
        max_waiting: int = 16,
        max_wait_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # exponential moving average of how long one request holds the engine
        self._service_s: float | None = None

    # -- introspection ------------------------------------------------------

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def mean_service_s(self) -> float:
        return self._service_s if self._service_s is not None else 5.0

    def estimate_wait_s(self, position: int) -> float:
        """Seconds until the request at ``position`` (0 = next) could start."""
        rounds = (position + self._running) / self.concurrency
        return max(1.0, math.ceil(rounds * self.mean_service_s))

    def check_admission(self) -> None:
        """Raise ServerBusy if a new request could neither run nor wait."""
        if self._running >= self.concurrency and len(self._waiters) >= self.max_waiting:
            raise ServerBusy(
                "server busy: too many requests are waiting for the engine; retry with backoff",
                retry_after=self.estimate_wait_s(len(self._waiters)),
            )

    # -- acquiring ----------------------------------------------------------

    async def acquire(self, on_wait: Callable[[int], None] | None = None) -> "EngineSlot":
        """Wait for the engine. Raises ServerBusy / ServiceUnavailable."""
        if self._running < self.concurrency and not self._waiters:
            self._running += 1
            return EngineSlot(self)
        self.check_admission()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if on_wait is not None:
            on_wait(len(self._waiters) - 1)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=self.max_wait_s)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():
                # granted at the very moment the deadline passed: keep it
                return EngineSlot(self)
            position = self._remove(fut)
            raise ServiceUnavailable(
                f"the engine is busy: this request could not start within {self.max_wait_s:g} s",
                retry_after=self.estimate_wait_s(position),
            ) from None
        except BaseException:
            # cancelled (client gone): leave the queue, or hand on a slot we got
            if fut.done() and not fut.cancelled():
                self._release()
            else:
                self._remove(fut)
            raise
        return EngineSlot(self)

    def position_of(self, fut: asyncio.Future[None]) -> int:
        return self._waiters.index(fut)

    def _remove(self, fut: asyncio.Future[None]) -> int:
        try:
            position = self._waiters.index(fut)
        except ValueError:
            return 0
        del self._waiters[position]
        if not fut.done():
            fut.cancel()
        return position

    def _release(self, service_s: float | None = None) -> None:
        if service_s is not None:
            self._service_s = (
                service_s if self._service_s is None else 0.7 * self._service_s + 0.3 * service_s
            )
        # hand the slot straight to the next waiter (FIFO), else free it
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._running -= 1


class EngineSlot:
    """Held while a request uses the engine; ``release()`` exactly once."""

    __slots__ = ("_queue", "_started", "_released")

    def __init__(self, queue: EngineQueue) -> None:
        self._queue = queue
        self._started = queue._clock()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release(self._queue._clock() - self._started)
