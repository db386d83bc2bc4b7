"""Helpers shared by the kernel tests (fixtures come from adyton.testing's
pytest plugin): an authenticator and limiter plugin, a recording limiter."""

from __future__ import annotations

from adyton import Authenticator, Limiter, Principal, RateLimited, Reservation, Unauthorized, hookimpl


class KeyAuth(Authenticator):
    """API key "good" is principal "acct-1"; other keys are 401."""

    name = "keys"

    async def authenticate(self, credentials):
        if credentials.kind != "api_key":
            return None
        if credentials.secret == "good":
            return Principal(id="acct-1")
        raise Unauthorized("unknown key")


class AuthLimitPlugin:
    __name__ = "authlimit"

    def __init__(self, limiter):
        self.limiter = limiter

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(KeyAuth())

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


class LedgerLimiter(Limiter):
    name = "ledger"

    def __init__(self, refuse=False):
        self.refuse = refuse
        self.reserved = []
        self.settled = []

    async def reserve(self, principal, cost):
        if self.refuse:
            raise RateLimited("spent", retry_after=5)
        self.reserved.append(cost)
        return Reservation(principal, cost, headers={"x-ratelimit-remaining-tokens": "99"})

    async def settle(self, reservation, usage, outcome):
        self.settled.append((reservation.principal.id, usage.prompt_tokens, usage.completion_tokens, outcome))


def kernel_of(app):
    return app.extensions["adyton"]
