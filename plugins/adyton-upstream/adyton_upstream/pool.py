"""Replicas of one model: least-outstanding-requests balancing, back-off
for a replica that failed, and its return once a health check or a request
succeeds again. Shared by the engine threads (one lock)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from adyton import ServiceUnavailable


@dataclass(eq=False)
class Replica:
    model: str
    url: str
    api_key: str | None
    #: requests in flight to it now
    outstanding: int = 0
    #: failures in a row (the back-off doubles with each)
    failures: int = 0
    #: monotonic time before which it gets no requests (0: in service)
    down_until: float = 0.0
    last_error: str = ""
    served: int = 0
    #: monotonic time of the last stream data it sent (0: none yet)
    last_data: float = 0.0
    #: its streams came without usage (logged once)
    warned_no_usage: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def up(self) -> bool:
        return self.down_until <= time.monotonic()


@dataclass
class ReplicaPool:
    """Every replica of every model, and the policy for choosing one."""

    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _turn: int = 0

    def add(self, replica: Replica) -> None:
        self.replicas.setdefault(replica.model, []).append(replica)

    def check_available(self, model: str) -> None:
        """Raise 503 with Retry-After when every replica of ``model`` is out."""
        with self._lock:
            replicas = self.replicas.get(model, [])
            if replicas and not any(r.up for r in replicas):
                raise self._all_down(model, replicas)

    def acquire(self, model: str, exclude: set[int]) -> Replica | None:
        """The replica in service with the fewest requests in flight (ties
        taken in turn), not among ``exclude`` (ids); its count is taken.
        None when there is none (``check_available`` then says why)."""
        now = time.monotonic()
        with self._lock:
            replicas = self.replicas.get(model, [])
            candidates = [r for r in replicas if r.down_until <= now and id(r) not in exclude]
            if not candidates:
                return None
            self._turn += 1
            n = len(candidates)
            best = min(range(n), key=lambda i: (candidates[i].outstanding, (i - self._turn) % n))
            replica = candidates[best]
            replica.outstanding += 1
            return replica

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.outstanding -= 1

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            replica.failures = 0
            replica.down_until = 0.0
            replica.last_error = ""
            replica.served += 1

    def failed(self, replica: Replica, why: str) -> None:
        """Take ``replica`` out for the back-off (doubled per failure in a row)."""
        with self._lock:
            replica.failures += 1
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (replica.failures - 1))
            replica.down_until = time.monotonic() + wait
            replica.last_error = why

    def _all_down(self, model: str, replicas: list[Replica]) -> ServiceUnavailable:
        now = time.monotonic()
        wait = min((r.down_until - now for r in replicas), default=self.backoff_s)
        why = "; ".join(f"{r.url}: {r.last_error}" for r in replicas if r.last_error)
        return ServiceUnavailable(
            f"every replica of model '{model}' is out of service" + (f" ({why})" if why else ""),
            code="upstream_unavailable", retry_after=max(1.0, wait),
        )
