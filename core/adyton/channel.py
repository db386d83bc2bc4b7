"""``_Channel``: the events of one generation, from the event loop and from
the engine thread, to its one consumer."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from .queue import mailbox_for


class _Channel:
    """Events for one consumer, from the event loop and from the engine
    thread. The engine thread wakes the loop only when the consumer is
    actually waiting, through the coalescing loop mailbox."""

    __slots__ = ("_items", "_loop", "_mailbox", "_waiter", "_wake_pending", "thread_wakes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._mailbox = mailbox_for(loop)
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_pending = False
        #: False: items from the engine thread never wake the consumer (one
        #: that only needs the end, which comes from the loop: it takes them
        #: all then, instead of a wake-up and a loop pass for each)
        self.thread_wakes = True

    def put(self, item: Any) -> None:
        """From the event loop."""
        self._items.append(item)
        self._wake()

    def put_threadsafe(self, item: Any) -> None:
        """From the engine thread. (Append first, then look for a waiter: the
        consumer sets its waiter first, then looks for items, so one of the
        two always sees the other.)"""
        self._items.append(item)
        if self._waiter is not None and not self._wake_pending and self.thread_wakes:
            self._wake_pending = True
            self._mailbox.post(self._wake_from_thread)

    def _wake_from_thread(self) -> None:
        self._wake_pending = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Any:
        """The next item; ``asyncio.TimeoutError`` after ``timeout`` s of silence.

        The timeout is a timer on the waiter, not ``asyncio.wait_for``: on
        Python 3.11 ``wait_for`` returns the result, swallowing the
        cancellation, when an item arrives in the same loop pass as the
        cancel — and a streaming client that went away right then would keep
        the engine generating for nobody."""
        while not self._items:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            try:
                if self._items:  # arrived while the waiter was being set
                    break
                if timeout is not None:
                    timer = self._loop.call_later(timeout, _time_out, waiter)
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if waiter.result() is _TIMED_OUT and not self._items:
                raise TimeoutError
        return self._items.popleft()


_TIMED_OUT = object()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)
