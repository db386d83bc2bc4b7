"""The account holder's own view: ``GET /v1/account`` and
``POST /v1/account/rotate-key``, authenticated with the account's API key or
its 64-digit account number (``Authorization: Bearer ...`` or ``x-api-key``).

``GET /v1/account`` answers, for the caller's own account only: the tier and
its limits, today's usage against the daily quota and this minute's headroom
(read from the same counters admission uses, so in-flight reservations
count), requests in flight, the last 30 days from the ledger's daily totals,
and how far the account is from the next automatic tier.

CSRF: nothing here reads a cookie. Every call must carry the credential in a
header, which a page on another origin cannot add to a cross-site request
without a CORS preflight that this server only grants to the configured
``server.cors_origins``. A state-changing call sent with a form content type
(what a plain HTML form can post cross-site) is refused with 415 all the same.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, request

from adyton import Credentials, RequestCost, Unauthorized

from .http import _JsonSurface, refuse_form_posts
from .store import Account, utc_day

if TYPE_CHECKING:  # pragma: no cover
    from .service import LimitsService

#: how many days of history ``GET /v1/account`` returns (today included)
HISTORY_DAYS = 30

class AccountApi(_JsonSurface):
    """The signed-in account's own data and key rotation."""

    name = "limits-account"
    url_prefixes = ("/v1/account",)

    def __init__(self, service: LimitsService) -> None:
        self.service = service
        bp = Blueprint("adyton_limits_account", __name__, url_prefix="/v1/account")
        bp.add_url_rule("", "show", self.show, methods=["GET"])
        bp.add_url_rule("/rotate-key", "rotate", self.rotate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    async def _caller(self) -> tuple[Account, str]:
        """The caller's account and how they signed in ("api_key" or "account_number")."""
        credentials = Credentials.from_headers(request.headers, wire_format=self.name,
                                               client_address=request.remote_addr)
        if credentials.kind == "none":
            raise Unauthorized("sign in with your API key or account number: "
                               "Authorization: Bearer <key>", code="missing_api_key")
        account = await self.service.account_for(credentials.kind, credentials.secret)
        secret = credentials.secret.strip()
        return account, "account_number" if secret.isdigit() else "api_key"

    async def show(self) -> Response:
        account, signed_in_with = await self._caller()
        body = await self.describe(account)
        body["signed_in_with"] = signed_in_with
        return jsonify(body)

    async def rotate(self) -> Response:
        refuse_form_posts()
        account, _ = await self._caller()
        key = await self.service.in_writer(self.service.store.rotate_key, account.id)
        response = jsonify({"id": account.id, "api_key": key,
                            "message": "every previous key of this account stopped working; "
                                       "this key is shown once"})
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- the account's figures ----------------------------------------------------

    async def describe(self, account: Account) -> dict[str, Any]:
        service = self.service
        settings = service.settings
        now = service.clock()
        tier = account.tier if account.tier in settings.tiers else settings.default_tier
        limits = settings.tiers[tier]
        windows = await self._windows(account, tier, now)
        history = await self._history(account.id, now)
        today = history[-1]
        return {
            "object": "account",
            **account.as_dict(),
            "limits": limits.model_dump(),
            "today": {
                "day": today["day"],
                # settled usage from the ledger
                "requests": today["requests"],
                "prompt_tokens": today["prompt_tokens"],
                "completion_tokens": today["completion_tokens"],
                "total_tokens": today["total_tokens"],
            },
            # what admission sees: the counters, in-flight reservations included
            "windows": windows,
            "history": history,
            "upgrade": await self._upgrade_progress(account, tier, now),
        }

    async def _windows(self, account: Account, tier: int, now: float) -> dict[str, Any]:
        """Each counter's used / limit / remaining / reset, read without
        changing it. The counters' keys come from the limiter itself."""
        limiter = self.service.limiter
        counts = self.service.counters
        limits = self.service.settings.tiers[tier]
        # a cost of one token makes the limiter list every window of the tier
        probe = RequestCost(model="", prompt_tokens=1, max_completion_tokens=0)
        out: dict[str, Any] = {}
        for c in limiter._counters(account.id, limits, probe, now):
            if counts is None:
                used = 0
            elif c.dimension == "concurrency":  # leased in-flight slots, not a counter
                used = await counts.slot_count(c.key)
            else:
                used = max(0, await counts.get(c.key))
            entry: dict[str, Any] = {"used": used, "limit": c.limit, "remaining": max(0, c.limit - used)}
            if c.period:
                entry["resets_in_s"] = max(0, math.ceil(c.reset_at - now))
            out[c.name] = entry
        return out

    async def _history(self, account_id: str, now: float) -> list[dict[str, Any]]:
        """The last ``HISTORY_DAYS`` UTC days, oldest first, zeros included."""
        today = datetime.fromtimestamp(now, UTC).date()
        days = [(today - timedelta(days=i)).isoformat() for i in range(HISTORY_DAYS - 1, -1, -1)]
        rows = await self.service.read(self.service.store.daily_totals, account_id, days[0])
        found = {day: (requests, prompt, completion) for day, requests, prompt, completion in rows}
        history = []
        for day in days:
            requests, prompt, completion = found.get(day, (0, 0, 0))
            history.append({"day": day, "requests": requests, "prompt_tokens": prompt,
                            "completion_tokens": completion, "total_tokens": prompt + completion})
        return history

    async def _upgrade_progress(self, account: Account, tier: int, now: float) -> dict[str, Any]:
        """How far the account is from the automatic promotion the ledger
        applies (``UpgradeRule``): the same thresholds, counted the same way."""
        rule = self.service.settings.upgrade
        tiers = self.service.settings.tiers
        higher = sorted(t for t in tiers if t > tier)
        base: dict[str, Any] = {"enabled": rule.enabled, "days_needed": rule.days, "share": rule.share,
                                "max_tier": rule.max_tier, "next_tier": None, "days_counted": 0}
        if not rule.enabled or not higher or higher[0] > rule.max_tier:
            base["reason"] = ("automatic upgrades are off" if not rule.enabled else
                              "no higher tier is reached automatically")
            return base
        req, tok = rule.thresholds(tiers[tier])
        since = utc_day(account.tier_changed_at)
        counted = await self.service.read(self.service.store.days_reaching, account.id, since, req, tok)
        base.update({"next_tier": higher[0], "days_counted": counted,
                     "requests_per_day_needed": req, "tokens_per_day_needed": tok, "since": since})
        return base
