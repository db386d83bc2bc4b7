"""Limits: every limiter reserves the request's cost before it is queued
(``Limiter.reserve``, in turn; a refusal releases the reservations already
made) and settles it exactly once with the real usage (``Limiter.settle``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import AdytonError, RateLimited
from .hookspecs import Limiter
from .types import Principal, RequestCost, Reservation, Usage

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel

log = logging.getLogger("adyton.pipeline")


async def reserve(kernel: Kernel, principal: Principal, cost: RequestCost, wire: str) -> list[Reservation]:
    reservations: list[tuple[Limiter, Reservation]] = []
    try:
        for limiter in kernel.limiters:
            reservation = await limiter.reserve(principal, cost)
            reservation.data = (limiter, reservation.data)
            reservations.append((limiter, reservation))
    except BaseException as exc:
        for limiter, reservation in reversed(reservations):
            await _settle_one(limiter, reservation, Usage(), "rejected")
        if isinstance(exc, AdytonError):
            if isinstance(exc, RateLimited):
                for _, reservation in reservations:
                    exc.headers = {**reservation.headers, **exc.headers}
            kernel.metrics.rejected(exc, wire)
        raise
    return [r for _, r in reservations]


async def settle(reservations: list[Reservation], usage: Usage, outcome: str) -> None:
    for reservation in reservations:
        limiter, _ = reservation.data
        await _settle_one(limiter, reservation, usage, outcome)


async def _settle_one(limiter: Limiter, reservation: Reservation, usage: Usage, outcome: str) -> None:
    own = reservation.data
    if isinstance(own, tuple) and len(own) == 2 and own[0] is limiter:
        reservation.data = own[1]
    try:
        await limiter.settle(reservation, usage, outcome)
    except Exception:  # a failing limiter must not break the response
        log.exception("limiter %s failed to settle a reservation", limiter.name)
    finally:
        reservation.data = (limiter, reservation.data)

