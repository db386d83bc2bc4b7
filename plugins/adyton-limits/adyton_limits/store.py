"""Accounts, credentials and the usage ledger, in the kernel's SQL database.

One code path for SQLite and PostgreSQL (SQLAlchemy Core, through
``adyton.Database``); the schema is this plugin's Alembic revisions
(``adyton_limits/migrations``, version table ``alembic_version_limits``),
applied by ``open()``.

Secrets (API keys, account numbers) are stored only as SHA-256 hashes: they
are 200+ bits of randomness, so a fast hash is enough, and a lookup by hash
never needs the secret itself. The hash found by the index is compared again
with ``hmac.compare_digest``.

Nothing about accounts or keys is cached in the process: every
authentication reads the database, so a key rotated or an account disabled
on one server is refused by every server sharing the database at once.

Thread model: every call here blocks, so the plugin never makes one on the
event loop (on PostgreSQL a round trip, or a lock a query waits for, would
stall every request of the server): it runs writes in a single worker thread,
each in its own transaction (SQLite: ``BEGIN IMMEDIATE``; WAL mode, so
readers never wait for the writer), and reads on the kernel's worker threads
(``LimitsService.read``). Each ledger row is its own committed
transaction: a process killed at any moment leaves a database that opens,
with every row whose request was answered.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from adyton import Database

from .migrations import VERSION_TABLE, VERSIONS

KEY_PREFIX = "sk-"
KEY_RE = re.compile(r"^sk-[A-Za-z0-9_\-]{16,200}$")
NUMBER_LEN = 64
NUMBER_RE = re.compile(r"^[0-9]{64}$")

# the tables as the queries see them (the migrations create them)
_meta = sa.MetaData()
accounts = sa.Table(
    "accounts", _meta,
    sa.Column("id", sa.Text, primary_key=True), sa.Column("name", sa.Text), sa.Column("number_hash", sa.Text),
    sa.Column("number_last4", sa.Text), sa.Column("tier", sa.Integer), sa.Column("enabled", sa.Integer),
    sa.Column("created_at", sa.Float), sa.Column("tier_changed_at", sa.Float))
api_keys = sa.Table(
    "api_keys", _meta,
    sa.Column("hash", sa.Text, primary_key=True), sa.Column("account_id", sa.Text), sa.Column("prefix", sa.Text),
    sa.Column("created_at", sa.Float), sa.Column("revoked_at", sa.Float))
ledger_t = sa.Table(
    "ledger", _meta,
    sa.Column("id", sa.Integer, primary_key=True), sa.Column("account_id", sa.Text), sa.Column("model", sa.Text),
    sa.Column("prompt_tokens", sa.BigInteger), sa.Column("completion_tokens", sa.BigInteger),
    sa.Column("reserved_tokens", sa.BigInteger), sa.Column("outcome", sa.Text), sa.Column("wire_format", sa.Text),
    sa.Column("started_at", sa.Float), sa.Column("finished_at", sa.Float), sa.Column("day", sa.Text))
usage_daily = sa.Table(
    "usage_daily", _meta,
    sa.Column("account_id", sa.Text, primary_key=True), sa.Column("day", sa.Text, primary_key=True),
    sa.Column("requests", sa.BigInteger), sa.Column("prompt_tokens", sa.BigInteger),
    sa.Column("completion_tokens", sa.BigInteger))
tier_changes = sa.Table(
    "tier_changes", _meta,
    sa.Column("account_id", sa.Text), sa.Column("at", sa.Float), sa.Column("old_tier", sa.Integer),
    sa.Column("new_tier", sa.Integer), sa.Column("reason", sa.Text))

_ACCOUNT_COLS = (accounts.c.id, accounts.c.name, accounts.c.number_last4, accounts.c.tier, accounts.c.enabled,
                 accounts.c.created_at, accounts.c.tier_changed_at)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(b"adyton-limits:" + secret.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(36)


def new_account_number() -> str:
    return "".join(secrets.choice(string.digits) for _ in range(NUMBER_LEN))


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    number_last4: str
    tier: int
    enabled: bool
    created_at: float
    tier_changed_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "account_number_last4": self.number_last4,
            "tier": self.tier, "enabled": self.enabled,
            "created_at": _iso(self.created_at), "tier_changed_at": _iso(self.tier_changed_at),
        }


@dataclass(frozen=True, slots=True)
class NewAccount:
    account: Account
    account_number: str
    api_key: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.account.as_dict(), "account_number": self.account_number, "api_key": self.api_key}


@dataclass(slots=True)
class LedgerRow:
    account_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    reserved_tokens: int
    outcome: str
    wire_format: str
    started_at: float
    finished_at: float


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _account(row: Any) -> Account:
    return Account(row[0], row[1], row[2], int(row[3]), bool(row[4]), float(row[5]), float(row[6]))


class AccountStore:
    """The plugin's tables in ``db`` (an ``adyton.Database``, or the path of
    a SQLite file, which the store then opens and closes itself)."""

    def __init__(self, db: Database | str | Path, *, synchronous: str = "NORMAL",
                 clock: Callable[[], float] = time.time) -> None:
        self._owns_db = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database.sqlite(db, sqlite_synchronous=synchronous)
        self.clock = clock
        self._open = False

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return self.db.path

    def open(self) -> AccountStore:
        """Bring the tables to the newest revision (creating them, or adopting
        a raw-sqlite3 release's file as it is)."""
        self.db.upgrade(VERSIONS, VERSION_TABLE)
        self._open = True
        return self

    def close(self) -> None:
        if self._owns_db:
            self.db.dispose()
        self._open = False

    def _write(self, fn: Callable[[Connection], Any]) -> Any:
        if not self._open:
            raise RuntimeError("the accounts database is not open")
        with self.db.transaction() as conn:
            return fn(conn)

    def _read(self, statement: Any, params: dict[str, Any] | None = None) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(statement, params or {}).all())

    # -- accounts ------------------------------------------------------------

    def create_account(self, tier: int, name: str = "") -> NewAccount:
        now = self.clock()
        account_id = "acct_" + secrets.token_hex(8)
        number = new_account_number()
        key = new_api_key()

        def tx(conn: Connection) -> None:
            conn.execute(accounts.insert().values(
                id=account_id, name=name, number_hash=hash_secret(number), number_last4=number[-4:], tier=tier,
                enabled=1, created_at=now, tier_changed_at=now))
            conn.execute(api_keys.insert().values(hash=hash_secret(key), account_id=account_id, prefix=key[:7],
                                                  created_at=now))

        self._write(tx)
        account = Account(account_id, name, number[-4:], tier, True, now, now)
        return NewAccount(account, number, key)

    def get(self, account_id: str) -> Account | None:
        rows = self._read(sa.select(*_ACCOUNT_COLS).where(accounts.c.id == account_id))
        return _account(rows[0]) if rows else None

    def find(self, ref: str) -> Account | None:
        """By id, by full account number, or by the last 4 digits if unique."""
        account = self.get(ref)
        if account is not None:
            return account
        if NUMBER_RE.match(ref):
            return self.by_account_number(ref)
        if re.fullmatch(r"[0-9]{4}", ref):
            rows = self._read(sa.select(*_ACCOUNT_COLS).where(accounts.c.number_last4 == ref).limit(2))
            if len(rows) == 1:
                return _account(rows[0])
        return None

    def list_accounts(self) -> list[Account]:
        return [_account(r) for r in self._read(sa.select(*_ACCOUNT_COLS).order_by(accounts.c.created_at))]

    def by_api_key(self, key: str) -> Account | None:
        digest = hash_secret(key)
        rows = self._read(
            sa.select(api_keys.c.hash, *_ACCOUNT_COLS).join_from(api_keys, accounts,
                                                                 accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.hash == digest, api_keys.c.revoked_at.is_(None)))
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        return _account(rows[0][1:])

    def by_account_number(self, number: str) -> Account | None:
        digest = hash_secret(number)
        rows = self._read(sa.select(accounts.c.number_hash, *_ACCOUNT_COLS).where(accounts.c.number_hash == digest))
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            return None
        return _account(rows[0][1:])

    def rotate_key(self, account_id: str) -> str:
        """A new key; every previous key of the account stops working now."""
        now = self.clock()
        key = new_api_key()

        def tx(conn: Connection) -> None:
            if conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update()
                            ).first() is None:
                raise KeyError(account_id)
            conn.execute(api_keys.update().where(api_keys.c.account_id == account_id, api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=now))
            conn.execute(api_keys.insert().values(hash=hash_secret(key), account_id=account_id, prefix=key[:7],
                                                  created_at=now))

        self._write(tx)
        return key

    def set_tier(self, account_id: str, tier: int, reason: str = "manual") -> Account:
        now = self.clock()

        def tx(conn: Connection) -> None:
            row = conn.execute(sa.select(accounts.c.tier).where(accounts.c.id == account_id).with_for_update()).first()
            if row is None:
                raise KeyError(account_id)
            conn.execute(accounts.update().where(accounts.c.id == account_id).values(tier=tier, tier_changed_at=now))
            conn.execute(tier_changes.insert().values(account_id=account_id, at=now, old_tier=int(row[0]),
                                                      new_tier=tier, reason=reason))

        self._write(tx)
        return self.get(account_id)  # type: ignore[return-value]

    def set_enabled(self, account_id: str, enabled: bool) -> Account:
        def tx(conn: Connection) -> None:
            cur = conn.execute(accounts.update().where(accounts.c.id == account_id).values(enabled=1 if enabled else 0))
            if cur.rowcount == 0:
                raise KeyError(account_id)

        self._write(tx)
        return self.get(account_id)  # type: ignore[return-value]

    # -- usage ---------------------------------------------------------------

    def record(self, row: LedgerRow, upgrade: Callable[[Connection, str, str], int | None] | None = None
               ) -> int | None:
        """Append a ledger row (and the day's totals) in one transaction;
        ``upgrade(conn, account_id, day)`` may promote the account in the same
        transaction. Returns the new tier if it changed."""
        day = utc_day(row.finished_at)
        counted = row.outcome != "rejected"

        def tx(conn: Connection) -> int | None:
            conn.execute(ledger_t.insert().values(
                account_id=row.account_id, model=row.model, prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens, reserved_tokens=row.reserved_tokens, outcome=row.outcome,
                wire_format=row.wire_format, started_at=row.started_at, finished_at=row.finished_at, day=day))
            if counted:
                # one statement both databases run atomically (servers settling at once add up)
                conn.execute(sa.text(
                    "INSERT INTO usage_daily (account_id, day, requests, prompt_tokens, completion_tokens)"
                    " VALUES (:a, :d, 1, :p, :c) ON CONFLICT (account_id, day) DO UPDATE SET"
                    " requests = usage_daily.requests + 1,"
                    " prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,"
                    " completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens"),
                    {"a": row.account_id, "d": day, "p": row.prompt_tokens, "c": row.completion_tokens})
                if upgrade is not None:
                    return upgrade(conn, row.account_id, day)
            return None

        return self._write(tx)

    def daily_usage(self, day: str) -> builtins.list[tuple[str, int, int]]:
        """(account_id, requests, tokens) for every account with usage on ``day``."""
        u = usage_daily.c
        rows = self._read(sa.select(u.account_id, u.requests, u.prompt_tokens + u.completion_tokens)
                          .where(u.day == day))
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def usage(self, account_id: str | None = None, since: float | None = None) -> builtins.list[dict[str, Any]]:
        """Ledger totals per account and outcome (since ``since``)."""
        c = ledger_t.c
        query = sa.select(c.account_id, c.outcome, sa.func.count(), sa.func.sum(c.prompt_tokens),
                          sa.func.sum(c.completion_tokens))
        if account_id:
            query = query.where(c.account_id == account_id)
        if since is not None:
            query = query.where(c.finished_at >= since)
        rows = self._read(query.group_by(c.account_id, c.outcome).order_by(c.account_id, c.outcome))
        return [{"account_id": r[0], "outcome": r[1], "requests": int(r[2]),
                 "prompt_tokens": int(r[3] or 0), "completion_tokens": int(r[4] or 0)} for r in rows]

    def ledger(self, account_id: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        c = ledger_t.c
        keys = ("id", "account_id", "model", "prompt_tokens", "completion_tokens", "reserved_tokens", "outcome",
                "wire_format", "started_at", "finished_at")
        query = sa.select(*(c[k] for k in keys))
        if account_id:
            query = query.where(c.account_id == account_id)
        rows = self._read(query.order_by(c.id.desc()).limit(limit))
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- self-service and paging (GET /v1/account, GET /admin/accounts?q=) ------

    def daily_totals(self, account_id: str, since_day: str) -> builtins.list[tuple[str, int, int, int]]:
        """(day, requests, prompt_tokens, completion_tokens) per UTC day from ``since_day`` on."""
        u = usage_daily.c
        rows = self._read(sa.select(u.day, u.requests, u.prompt_tokens, u.completion_tokens)
                          .where(u.account_id == account_id, u.day >= since_day).order_by(u.day))
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def days_reaching(self, account_id: str, since_day: str, requests: int | None, tokens: int | None,
                      conn: Connection | None = None) -> int:
        """How many days since ``since_day`` reached ``requests`` or ``tokens``
        (None: that dimension does not count), as the upgrade rule counts them.
        ``conn``: the writer inside a transaction (to see its own rows)."""
        if requests is None and tokens is None:
            return 0
        u = usage_daily.c
        query = sa.select(sa.func.count()).where(
            u.account_id == account_id, u.day >= since_day,
            sa.or_(u.requests >= (requests if requests is not None else 2**62),
                   u.prompt_tokens + u.completion_tokens >= (tokens if tokens is not None else 2**62)))
        if conn is not None:
            return int(conn.execute(query).scalar_one())
        return int(self._read(query)[0][0])

    def page(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[int, builtins.list[Account]]:
        """(how many match, one page of them, oldest first): ``query`` matches
        the id, the name (substring, case-insensitive) or the last 4 digits."""
        where: sa.ColumnElement[bool] = sa.true()
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where = sa.or_(accounts.c.id.ilike(pattern, escape="\\"), accounts.c.name.ilike(pattern, escape="\\"),
                           accounts.c.number_last4 == query)
        with self.db.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(accounts).where(where)).scalar_one())
            rows = conn.execute(sa.select(*_ACCOUNT_COLS).where(where).order_by(accounts.c.created_at, accounts.c.id)
                                .limit(limit).offset(offset)).all()
        return total, [_account(r) for r in rows]
