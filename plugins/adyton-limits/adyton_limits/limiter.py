"""Per-account admission control on counters of the ``limits`` library.

Counters
--------
Every limit is a counter in a ``limits`` async storage: ``MemoryStorage``
(``memory://``, one server) or ``RedisStorage`` (``redis://host:port``,
through redis-py; several servers share one account's counters). Only the
storages' atomic ``incr(key, expiry, amount)`` is used — an ``INCRBY`` in a
Lua script on Redis, a locked add in memory — with the window in the key:

* ``<prefix>/<account>/rpm/<minute index>`` and ``.../tpm/<minute index>``:
  minute windows aligned to the clock's whole minutes;
* ``<prefix>/<account>/rpd/<YYYY-MM-DD>`` and ``.../tpd/<YYYY-MM-DD>``:
  day windows aligned to 00:00 UTC;
* ``<prefix>/<account>/slots``: requests in flight, one *slot* per request
  (below).

Why not ``FixedWindowRateLimiter.hit``/``MovingWindowRateLimiter``: their
windows start at the first hit (not at 00:00 UTC), their keys contain the
limit (a tier change would reset the day), and neither can give tokens back.
A moving window cannot remove an entry at all; the fixed-window counter can
take a negative ``incr`` on both storages (``MemoryStorage.decr`` clamps at 0,
Redis storage has no ``decr``), which is what refunds use.

Admission (exact under concurrency)
-----------------------------------
``reserve`` increments every counter of the request by its worst case
(1 request, prompt + max_tokens tokens, +1 in flight) and looks at the values
the increments returned. Each ``INCRBY`` is atomic, so the values handed out
for one counter are a strict sequence: a request is admitted only if every
counter stayed within its limit *including* its own amount. If any counter
went over, the request rolls back all its increments and is refused. A
refused request's increment is visible to others until its rollback lands,
so under contention a request may be refused that a perfectly serial limiter
would have admitted (conservative), but a limit can never be overrun: with
50 simultaneous requests against 20 requests/minute, exactly 20 get a value
<= 20. This holds for one process and for many servers sharing Redis.

Settling
--------
``settle`` gives back ``reserved - used`` tokens to the *same* window keys
the reservation charged (kept in the reservation), releases the in-flight
slot, and writes a ledger row. A request refused later in the path
(``outcome == "rejected"``) never ran: its request counts are given back too.
A refund that lands after its minute window expired creates a short-lived
negative counter in a key no one reads again: harmless.

In-flight slots (leases)
------------------------
Requests in flight are not a bare counter but one entry per request, keyed
by the request (``<server id>:<reservation id>``), in a sorted set per
account scored by the entry's lease expiry (on Redis: a Lua script using
Redis's own clock; in memory: a dict). Taking a slot drops expired entries,
counts the rest and adds ours only if it fits — atomically, so admission
stays exact. Every running server renews the leases of the slots it holds
every ``slot_lease_s / 3`` seconds. So:

* releasing is idempotent (remove *this* request's entry): a release that
  failed is simply retried, and one too many changes nothing;
* a slot whose acquisition reached Redis after its request was already
  refused (Redis paused, then resumed: the queued command lands late) is
  removed by a background release, or at the latest expires after
  ``slot_lease_s``, because no server renews it;
* slots of a server killed with ``kill -9`` expire ``slot_lease_s`` after its
  last renewal: a restarted (or any other) server has the account's full
  concurrency back within that time, not after an hour.

A failed request or token refund is logged and not retried — a retry after
a reply that got lost would hand out used quota — so the account stays
charged for it until its window ends (conservative).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adyton import (
    GenerationRequest,
    InvalidRequest,
    Limiter,
    Principal,
    RateLimited,
    RequestCost,
    Reservation,
    ServiceUnavailable,
    Usage,
)

from .settings import LimitsSettings, TierLimits
from .store import LedgerRow, utc_day

if TYPE_CHECKING:  # pragma: no cover
    from .service import LimitsService

log = logging.getLogger("adyton.limits")

MINUTE = 60
DAY = 86400


class Counters:
    """The ``limits`` storage behind the counters.

    On Redis the client's connections come from a *blocking* pool of
    ``max_connections``: a burst that needs more round trips at once than
    the pool holds waits up to ``pool_timeout_s`` for a free connection
    instead of failing (redis-py's default pool raises "Too many
    connections" past 100, which a burst of 25 requests x 5 counters hits).
    """

    def __init__(self, uri: str, prefix: str = "adyton", *, max_connections: int = 50,
                 pool_timeout_s: float = 10.0, timeout_s: float = 5.0) -> None:
        from limits.aio.storage import MemoryStorage, Storage
        from limits.storage import storage_from_string

        self.uri = uri
        self.prefix = prefix
        self._pool = None
        self._client: Any = None
        self._slots: dict[str, dict[str, float]] = {}  #: memory: key -> member -> lease end
        self.storage: Storage
        scheme = uri.split(":", 1)[0].lower()
        if scheme in ("memory", "async+memory"):
            self.storage = MemoryStorage()
            self.shared = False
        elif scheme in ("redis", "rediss", "redis+unix", "async+redis", "async+rediss", "async+redis+unix"):
            from redis.asyncio import BlockingConnectionPool

            bare = uri.removeprefix("async+")  # limits wants "async+redis://", redis-py "redis://"
            redis_url = "unix:" + bare.removeprefix("redis+unix:") if bare.startswith("redis+unix:") else bare
            # socket_timeout: a paused or unreachable Redis is a 503 after
            # timeout_s, not a request hanging until Redis answers again
            pool = BlockingConnectionPool.from_url(redis_url, max_connections=max_connections,
                                                   timeout=pool_timeout_s, socket_timeout=timeout_s,
                                                   socket_connect_timeout=timeout_s)
            # limits types storage options as scalars; its redispy storage takes a connection pool
            storage = storage_from_string("async+" + bare, implementation="redispy",
                                          key_prefix=prefix, connection_pool=pool)  # type: ignore[arg-type]
            if not isinstance(storage, Storage):  # "async+" asks for the asyncio storage
                raise TypeError(f"limits made a synchronous storage for {uri!r}")
            self.storage = storage
            self._pool = pool
            from redis.asyncio import Redis

            self._client = Redis(connection_pool=pool)
            self._acquire = self._client.register_script(_ACQUIRE)
            self._renew = self._client.register_script(_RENEW)
            self.shared = True
        else:
            raise ValueError(f"limits.storage_uri: unsupported scheme in {uri!r} (use memory:// or redis://host:port)")

    async def check(self) -> None:
        if not await self.storage.check():
            raise RuntimeError(f"the limits storage at {self.uri} does not answer")

    async def incr(self, key: str, expiry: float, amount: int) -> int:
        return int(await self.storage.incr(f"{self.prefix}/{key}", int(expiry), amount=int(amount)))

    async def incr_many(self, items: list[tuple[str, float, int]]) -> list[int | BaseException]:
        """Each increment's new value, or the exception that stopped it."""
        if self.shared:  # overlap the round trips; each INCRBY stays atomic
            return list(await asyncio.gather(*(self.incr(k, e, a) for k, e, a in items), return_exceptions=True))
        return [await self.incr(k, e, a) for k, e, a in items]

    async def get(self, key: str) -> int:
        return int(await self.storage.get(f"{self.prefix}/{key}"))

    # -- in-flight slots: one leased entry per request ---------------------------

    async def slot_acquire(self, key: str, member: str, limit: int, lease_s: float) -> int:
        """Drop expired entries of ``key``; if fewer than ``limit`` remain
        (0: no limit), add ``member`` with a lease of ``lease_s``. Atomic.
        Returns the count including ``member``: above ``limit`` means it
        was not added."""
        if self._client is not None:
            return int(await self._acquire(keys=[f"{self.prefix}/{key}"],
                                           args=[member, int(limit), int(lease_s * 1000)]))
        now = time.monotonic()
        entries = self._slots.setdefault(key, {})
        for m in [m for m, end in entries.items() if end <= now]:
            del entries[m]
        if limit and len(entries) >= limit and member not in entries:
            return len(entries) + 1
        entries[member] = now + lease_s
        return len(entries)

    async def slot_release(self, key: str, member: str) -> None:
        """Remove ``member`` (idempotent)."""
        if self._client is not None:
            await self._client.zrem(f"{self.prefix}/{key}", member)
        else:
            self._slots.get(key, {}).pop(member, None)

    async def slot_renew(self, slots: list[tuple[str, str]], lease_s: float) -> None:
        """Extend the leases of these (key, member) slots that still exist."""
        if not slots:
            return
        if self._client is not None:
            await self._renew(keys=[f"{self.prefix}/{k}" for k, _ in slots],
                              args=[int(lease_s * 1000), *(m for _, m in slots)])
            return
        end = time.monotonic() + lease_s
        for key, member in slots:
            entries = self._slots.get(key, {})
            if member in entries:
                entries[member] = end

    async def slot_count(self, key: str) -> int:
        """Slots of ``key`` whose lease has not run out."""
        if self._client is not None:
            now_s, now_us = await self._client.time()
            now_ms = int(now_s) * 1000 + int(now_us) // 1000
            return int(await self._client.zcount(f"{self.prefix}/{key}", f"({now_ms}", "+inf"))
        now = time.monotonic()
        return sum(1 for end in self._slots.get(key, {}).values() if end > now)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose(close_connection_pool=False)
        if self._pool is not None:  # a pool handed to the client is not closed by the client
            await self._pool.aclose()


#: KEYS[1] slot set; ARGV member, limit (0: none), lease in ms. Redis's clock.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
if limit > 0 and n >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return n + 1
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return redis.call('ZCARD', KEYS[1])
"""

#: KEYS slot sets; ARGV[1] lease in ms, ARGV[i + 1] the member in KEYS[i].
#: ZADD XX: a slot released meanwhile is not brought back.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return #KEYS
"""


@dataclass(slots=True)
class Counter:
    name: str        #: "requests/minute", ...
    dimension: str   #: "requests" | "tokens" | "concurrency"
    period: str      #: "minute" | "day" | ""
    key: str
    expiry: float    #: seconds: a window counter's time to live, a slot's lease
    amount: int
    limit: int
    reset_at: float  #: when the window ends (clock time)
    value: int = 0   #: the counter after our increment
    member: str = ""  #: concurrency: this request's slot entry


@dataclass(slots=True)
class Held:
    """The limiter's bookkeeping inside a ``Reservation``."""

    account_id: str
    started_at: float
    tokens: int
    counters: list[Counter] = field(default_factory=list)


def fmt_duration(seconds: float) -> str:
    """OpenAI-style reset durations: ``"59s"``, ``"1m0s"``, ``"6h3m12s"``."""
    s = max(0, math.ceil(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def next_utc_midnight(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (d + timedelta(days=1)).timestamp()


class AccountLimiter(Limiter):
    name = "limits"
    #: the headers ``_headers`` adds to responses and to 429s
    exposed_headers = tuple(f"x-ratelimit-{what}-{dimension}" for dimension in ("requests", "tokens")
                            for what in ("limit", "remaining", "reset"))

    def __init__(self, service: LimitsService) -> None:
        self.service = service

    @property
    def settings(self) -> LimitsSettings:
        return self.service.settings

    def tier_limits(self, principal: Principal) -> tuple[int, TierLimits]:
        tiers = self.settings.tiers
        try:
            tier = int(principal.tier) if principal.tier is not None else self.settings.default_tier
        except ValueError:
            tier = self.settings.default_tier
        if tier not in tiers:
            lower = [t for t in tiers if t <= tier]
            tier = max(lower) if lower else self.settings.default_tier
        return tier, tiers[tier]

    def apply_caps(self, request: GenerationRequest, principal: Principal) -> None:
        """The tier's per-request caps, before anything is reserved: ``n``
        above ``max_n`` and an explicit ``max_tokens`` above
        ``max_tokens_per_request`` are refused (400, naming the parameter);
        a request that names no ``max_tokens``, or lets the server fit it to
        the context (Axiom), is capped instead."""
        if principal.anonymous:
            return
        tier, limits = self.tier_limits(principal)
        if limits.max_n and request.n > limits.max_n:
            raise InvalidRequest(
                f"n is {request.n}; tier {tier} allows at most {limits.max_n} choices per request",
                param="n", code="n_above_tier_limit")
        cap = limits.max_tokens_per_request
        if not cap:
            return
        if request.max_tokens is None or request.fit_context:
            if request.max_tokens is None or request.max_tokens > cap:
                request.max_tokens = cap
                request.fit_context = True  # and less if the context has less room
        elif request.max_tokens > cap:
            raise InvalidRequest(
                f"max_tokens is {request.max_tokens}; tier {tier} allows at most {cap} tokens per "
                "choice: lower max_tokens", param="max_tokens", code="max_tokens_above_tier_limit")

    def _counters(self, account: str, limits: TierLimits, cost: RequestCost, now: float) -> list[Counter]:
        minute = int(now // MINUTE)
        minute_end = (minute + 1) * MINUTE
        day = utc_day(now)
        day_end = next_utc_midnight(now)
        tokens = cost.max_total_tokens
        lease = self.settings.slot_lease_s
        spec = [
            ("requests/day", "requests", "day", f"{account}/rpd/{day}", 2 * DAY, 1, limits.requests_per_day, day_end),
            ("tokens/day", "tokens", "day", f"{account}/tpd/{day}", 2 * DAY, tokens, limits.tokens_per_day, day_end),
            ("requests/minute", "requests", "minute", f"{account}/rpm/{minute}", 2 * MINUTE, 1,
             limits.requests_per_minute, minute_end),
            ("tokens/minute", "tokens", "minute", f"{account}/tpm/{minute}", 2 * MINUTE, tokens,
             limits.tokens_per_minute, minute_end),
            ("concurrent requests", "concurrency", "", f"{account}/slots", lease, 1,
             limits.concurrent_requests, now + 1),
        ]
        counters = [Counter(*row) for row in spec if row[6] > 0 and row[5] > 0]
        for c in counters:
            if c.dimension == "concurrency":
                c.member = f"{self.service.server_id}:{uuid.uuid4().hex}"
        return counters

    def _take(self, c: Counter) -> Any:
        """The awaitable that charges ``c``: a slot, or an increment."""
        counts = self.service.counters
        if c.dimension == "concurrency":
            return counts.slot_acquire(c.key, c.member, c.limit, self.settings.slot_lease_s)
        return counts.incr(c.key, c.expiry, c.amount)

    async def reserve(self, principal: Principal, cost: RequestCost) -> Reservation:
        service = self.service
        if service.ledger_error is not None:
            # usage could not be recorded: no new work until it can (never
            # serve what cannot be accounted for)
            raise ServiceUnavailable(
                "the usage ledger cannot be written (is the disk full?); try again shortly",
                code="ledger_unavailable", retry_after=10.0)
        now = service.clock()
        tier, limits = self.tier_limits(principal)
        counters = self._counters(principal.id, limits, cost, now)
        too_big = [c for c in counters if c.dimension == "tokens" and c.amount > c.limit]
        if too_big:
            c = too_big[0]
            headers = self._headers(counters, now, before=True)
            raise RateLimited(
                f"this request may use up to {c.amount} tokens (prompt + max_tokens), more than the "
                f"{c.limit} {c.name} of tier {tier}: lower max_tokens",
                should_retry=False, code="request_exceeds_limit", headers=headers,
            )
        counts = self.service.counters
        values = await self._all([self._take(c) for c in counters])
        failed = [v for v in values if isinstance(v, BaseException)]
        if failed:
            # the storage (Redis) is unreachable: undo what did land, refuse with 503
            landed = [c for c, v in zip(counters, values, strict=True) if not isinstance(v, BaseException)]
            await self._give_back_all(principal.id, [(c, c.amount) for c in landed])
            for c, v in zip(counters, values, strict=True):
                if c.dimension == "concurrency" and isinstance(v, BaseException):
                    # the slot may still land (a paused Redis runs the queued
                    # script later): remove it once the storage answers again;
                    # unrenewed, it expires after slot_lease_s anyway
                    self.service.spawn(self._release_later(principal.id, c))
            log.error("limits storage %s failed: %r", counts.uri, failed[0])
            raise ServiceUnavailable("the rate-limit storage is unavailable; try again shortly",
                                     retry_after=5.0)
        for c, v in zip(counters, values, strict=True):
            c.value = v
        over = [c for c in counters if c.value > c.limit]
        if over:
            await self._give_back_all(principal.id, [(c, c.amount) for c in counters])
            raise self._refusal(over, counters, tier, now)
        held = Held(principal.id, now, cost.max_total_tokens, counters)
        for c in counters:
            if c.dimension == "concurrency":
                self.service.held_slots[c.member] = c.key  # renewed until settled
        return Reservation(principal=principal, cost=cost, headers=self._headers(counters, now), data=held)

    def _refusal(self, over: list[Counter], counters: list[Counter], tier: int, now: float) -> RateLimited:
        headers = self._headers(counters, now, before=True)
        daily = [c for c in over if c.period == "day"]
        if daily:
            c = daily[0]
            return RateLimited(
                f"daily quota exceeded: {c.name} of tier {tier} is {c.limit}; it resets at 00:00 UTC",
                should_retry=False, code="daily_quota_exceeded",
                retry_after=max(1.0, c.reset_at - now), headers=headers,
            )
        minute = [c for c in over if c.period == "minute"]
        if minute:
            c = minute[0]
            return RateLimited(
                f"rate limit reached: {c.name} of tier {tier} is {c.limit}; retry after the minute ends",
                code="rate_limit_exceeded", retry_after=min(60.0, max(1.0, c.reset_at - now)), headers=headers,
            )
        c = over[0]
        return RateLimited(
            f"too many concurrent requests: tier {tier} allows {c.limit} at once",
            code="concurrency_limit_exceeded", retry_after=1.0, headers=headers,
        )

    def _headers(self, counters: list[Counter], now: float, before: bool = False) -> dict[str, str]:
        """x-ratelimit-{limit,remaining,reset}-{requests,tokens}: of the
        window (minute or day) with the least room left."""
        headers: dict[str, str] = {}
        for dimension in ("requests", "tokens"):
            best: tuple[int, float, Counter] | None = None
            for c in counters:
                if c.dimension != dimension:
                    continue
                used = c.value - c.amount if before else c.value
                remaining = max(0, c.limit - used)
                rank = (remaining, c.reset_at)
                if best is None or rank < best[:2]:
                    best = (remaining, c.reset_at, c)
            if best is None:
                continue
            remaining, reset_at, c = best
            headers[f"x-ratelimit-limit-{dimension}"] = str(c.limit)
            headers[f"x-ratelimit-remaining-{dimension}"] = str(remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = fmt_duration(reset_at - now)
        return headers

    async def _all(self, coros: list) -> list[Any]:
        """Await every one; each result, or the exception that stopped it."""
        if self.service.counters.shared:  # Redis: overlap the round trips
            return list(await asyncio.gather(*coros, return_exceptions=True))
        results: list[Any] = []
        for coro in coros:  # memory: no I/O, tasks would only add cost
            try:
                results.append(await coro)
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results

    async def _give_back(self, c: Counter, amount: int) -> None:
        if amount == 0:
            return
        counts = self.service.counters
        if c.dimension == "concurrency":
            self.service.held_slots.pop(c.member, None)  # no more renewals
            await counts.slot_release(c.key, c.member)
            return
        await counts.incr(c.key, c.expiry, -amount)

    async def settle(self, reservation: Reservation, usage: Usage, outcome: str) -> None:
        held: Held = reservation.data
        used = usage.total_tokens
        refunds: list[tuple[Counter, int]] = []
        for c in held.counters:
            if c.dimension == "concurrency" or outcome == "rejected":
                refunds.append((c, c.amount))
            elif c.dimension == "tokens":
                # unused tokens back; a (never expected) overrun is charged
                refunds.append((c, c.amount - used))
        try:
            await self._give_back_all(held.account_id, refunds)
        finally:
            await self.service.record(LedgerRow(
                account_id=held.account_id,
                model=reservation.cost.model,
                prompt_tokens=usage.prompt_tokens if outcome != "rejected" else 0,
                completion_tokens=usage.completion_tokens if outcome != "rejected" else 0,
                reserved_tokens=held.tokens,
                outcome=outcome,
                wire_format=reservation.cost.wire_format,
                started_at=held.started_at,
                finished_at=self.service.clock(),
            ))

    async def _give_back_all(self, account: str, refunds: list[tuple[Counter, int]]) -> None:
        results = await self._all([self._give_back(c, amount) for c, amount in refunds])
        for (c, amount), result in zip(refunds, results, strict=True):
            if isinstance(result, BaseException):
                self._refund_failed(account, c, amount, result)

    def _refund_failed(self, account: str, c: Counter, amount: int, error: BaseException) -> None:
        """The storage failed a give-back. An in-flight slot is retried in the
        background (releasing is idempotent; left alone the slot would count
        against the account until its lease runs out). A request or token
        refund is not retried (if the
        first try did land, a second would hand out quota that was used):
        the account stays charged for it until the window ends."""
        if c.dimension == "concurrency":
            log.warning("limits: releasing an in-flight slot of %s failed (%r); retrying in the background",
                        account, error)
            self.service.spawn(self._release_later(account, c))
        else:
            log.warning("limits: %s stays charged %d %s it did not use, until its %s window ends: "
                        "the refund failed (%r)", account, amount, c.dimension, c.period, error)

    async def _release_later(self, account: str, c: Counter) -> None:
        delay, waited = 0.5, 0.0
        # after its lease (+ a margin for a late acquisition) the slot is gone anyway
        while waited < 2 * self.settings.slot_lease_s + 5:
            await asyncio.sleep(delay)
            waited += delay
            try:
                await self._give_back(c, c.amount)
                log.info("limits: released the in-flight slot of %s after %.1f s", account, waited)
                return
            except Exception:  # noqa: BLE001 - still down: try again later
                delay = min(2 * delay, 30.0)
        log.warning("limits: gave up releasing an in-flight slot of %s; its lease runs out by itself", account)

    async def seed_daily(self, day: str, rows: list[tuple[str, int, int]], now: float) -> None:
        """Memory storage only: after a restart, charge today's ledger totals
        to the fresh day counters so a restart does not reset daily quotas."""
        for account, requests, tokens in rows:
            if requests:
                await self.service.counters.incr(f"{account}/rpd/{day}", 2 * DAY, requests)
            if tokens:
                await self.service.counters.incr(f"{account}/tpd/{day}", 2 * DAY, tokens)
