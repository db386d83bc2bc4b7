"""The ``[limits]`` settings section."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TierLimits(BaseModel):
    """What one tier may use. 0 means "no limit" for that dimension."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(..., ge=0)
    tokens_per_minute: int = Field(..., ge=0)
    requests_per_day: int = Field(..., ge=0)
    tokens_per_day: int = Field(..., ge=0)
    concurrent_requests: int = Field(..., ge=0)
    #: per-request caps, checked before anything is reserved (0: no cap)
    max_n: int = Field(0, ge=0, description="Most choices (n) one request may ask for.")
    max_tokens_per_request: int = Field(
        0, ge=0, description="Most completion tokens (max_tokens) one choice may ask for; a request that names "
                             "none (or lets the server fit it) gets this cap.")


def default_tiers() -> dict[int, TierLimits]:
    # daily figures: Axione's published tier table; per-minute, concurrency
    # and per-request figures: ours (a tier may burst ~1/10 of its day in a
    # minute at the low end, less at the high end; one tier-1 request holds
    # the engine for at most 4 choices x 2048 tokens)
    return {
        1: TierLimits(requests_per_minute=60, tokens_per_minute=40_000,
                      requests_per_day=1_000, tokens_per_day=250_000, concurrent_requests=4,
                      max_n=4, max_tokens_per_request=2_048),
        2: TierLimits(requests_per_minute=200, tokens_per_minute=160_000,
                      requests_per_day=4_000, tokens_per_day=1_000_000, concurrent_requests=8,
                      max_n=8, max_tokens_per_request=4_096),
        3: TierLimits(requests_per_minute=1_000, tokens_per_minute=800_000,
                      requests_per_day=40_000, tokens_per_day=10_000_000, concurrent_requests=16,
                      max_n=16, max_tokens_per_request=8_192),
        4: TierLimits(requests_per_minute=2_000, tokens_per_minute=1_600_000,
                      requests_per_day=80_000, tokens_per_day=20_000_000, concurrent_requests=32,
                      max_n=16, max_tokens_per_request=16_384),
        5: TierLimits(requests_per_minute=3_000, tokens_per_minute=2_400_000,
                      requests_per_day=120_000, tokens_per_day=30_000_000, concurrent_requests=64,
                      max_n=16, max_tokens_per_request=32_768),
    }


class UpgradeRule(BaseModel):
    """Automatic promotion: an account moves up one tier once it used at
    least ``share`` of its daily quota (requests or tokens) on ``days``
    days since its last tier change. Never above ``max_tier``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Promote accounts automatically.")
    share: float = Field(0.5, gt=0.0, le=1.0, description="Share of a daily quota that makes a day count.")
    days: int = Field(3, ge=1, description="Counting days needed for a promotion.")
    max_tier: int = Field(4, ge=1, description="Highest tier reached automatically (higher tiers: by hand).")

    def thresholds(self, limits: TierLimits) -> tuple[int | None, int | None]:
        """(requests, tokens) a day must reach under ``limits`` to count;
        None for a dimension without a daily limit."""
        req = math.ceil(self.share * limits.requests_per_day) if limits.requests_per_day else None
        tok = math.ceil(self.share * limits.tokens_per_day) if limits.tokens_per_day else None
        return req, tok


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage_uri: str = Field(
        "memory://",
        description='Counter storage of the limits library: "memory://" (one server) or '
                    '"redis://host:port[/db]" (servers share limits).')
    key_prefix: str = Field("adyton", description="Prefix of counter keys (Redis).")
    redis_max_connections: int = Field(
        50, ge=1, description="Redis connections per server; a burst beyond them waits for a free one.")
    redis_pool_timeout_s: float = Field(
        10.0, gt=0, description="How long a counter update waits for a free Redis connection before the "
                                "request is refused with 503.")
    db_url: str | None = Field(
        None, description="Database of accounts, keys, tiers and the ledger (SQLAlchemy URL, e.g. "
                          "postgresql+psycopg://adyton:pw@db:5432/adyton; servers sharing accounts use one). "
                          "None: db_path, else $ADYTON_HOME/limits/accounts.sqlite3 if an earlier release "
                          "made it, else the kernel's [database] url.")
    db_path: Path | None = Field(
        None, description="Accounts + ledger in this SQLite file (ignored when db_url is set; default: see db_url).")
    admin_key_file: Path | None = Field(None,
                                        description="Admin API key file (default: $ADYTON_HOME/limits/admin.key, "
                                                    "created 0600 at first start).")
    metrics_token_file: Path | None = Field(
        None, description="File holding a token that grants /metrics only (access level \"metrics\"), for a "
                          "Prometheus scraper; the admin key always does. None: only the admin key.")
    default_tier: int = Field(1, ge=1, description="Tier of new accounts.")
    tiers: dict[int, TierLimits] = Field(default_factory=default_tiers, description="Tier number -> limits.")
    upgrade: UpgradeRule = Field(default_factory=UpgradeRule)
    signup_enabled: bool = Field(False, description="Public POST /create-account returning a new account number.")
    signup_per_hour: int = Field(5, ge=0, description="Sign-ups allowed per client address and hour (0: no limit).")
    slot_lease_s: float = Field(
        30.0, ge=1.0, description="Lease of an in-flight slot: running servers renew theirs every third of it; "
                                  "a slot no server renews (a killed server's, or one that reached Redis after "
                                  "its request was refused) is free after this.")
    redis_timeout_s: float = Field(
        5.0, gt=0, description="How long a Redis command may take (a paused or unreachable Redis); then the "
                               "request is refused with 503.")
    ledger_buffer_rows: int = Field(
        10_000, ge=1, description="Ledger rows kept in memory while the database cannot be written (disk "
                                  "full); new requests get 503 meanwhile, so only requests in flight add rows.")
    sqlite_synchronous: str = Field("NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$",
                                    description="SQLite synchronous mode (WAL; NORMAL survives process kills).")

    @model_validator(mode="after")
    def _check(self) -> LimitsSettings:
        if not self.tiers:
            raise ValueError("at least one tier is required")
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier} is not in the tiers table {sorted(self.tiers)}")
        return self
