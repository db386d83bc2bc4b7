"""Accounts, credentials and the usage ledger in SQLite (WAL mode).

Secrets (API keys, account numbers) are stored only as SHA-256 hashes: they
are 200+ bits of randomness, so a fast hash is enough, and a lookup by hash
never needs the secret itself. The hash found by the index is compared again
with ``hmac.compare_digest``.

Thread model: every write goes through one lock-protected connection (the
plugin runs writes in a single worker thread, off the event loop). Reads use
a per-thread connection; in WAL mode readers never wait for the writer, so a
read on the event loop (one indexed lookup) is quick. Each ledger row is its
own committed transaction: a process killed at any moment leaves a database
that opens, with every row whose request was answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import sqlite3
import string
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

KEY_PREFIX = "sk-"
KEY_RE = re.compile(r"^sk-[A-Za-z0-9_\-]{16,200}$")
NUMBER_LEN = 64
NUMBER_RE = re.compile(r"^[0-9]{64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    number_hash TEXT NOT NULL UNIQUE,
    number_last4 TEXT NOT NULL,
    tier INTEGER NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    tier_changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reserved_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    wire_format TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    day TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger(account_id, finished_at);
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);
CREATE TABLE IF NOT EXISTS tier_changes (
    account_id TEXT NOT NULL,
    at REAL NOT NULL,
    old_tier INTEGER NOT NULL,
    new_tier INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(b"adyton-limits:" + secret.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(36)


def new_account_number() -> str:
    return "".join(secrets.choice(string.digits) for _ in range(NUMBER_LEN))


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


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
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _account(row: sqlite3.Row | tuple) -> Account:
    return Account(row[0], row[1], row[2], int(row[3]), bool(row[4]), float(row[5]), float(row[6]))


_ACCOUNT_COLS = "id, name, number_last4, tier, enabled, created_at, tier_changed_at"


class AccountStore:
    def __init__(self, path: Path, *, synchronous: str = "NORMAL",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.clock = clock
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    # -- connections ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def open(self) -> "AccountStore":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network filesystem
            raise RuntimeError(f"could not switch {self.path} to WAL mode (got {mode})")
        with self._write_lock:
            conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
        self._writer = conn
        return self

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass
        self._writer = None
        self._local = threading.local()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._writer is None:
            raise RuntimeError("the accounts database is not open")
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")  # may fail too (disk full): then roll back
            except BaseException:
                if conn.in_transaction:  # (SQLite may already have rolled back)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

    # -- accounts ------------------------------------------------------------

    def create_account(self, tier: int, name: str = "") -> NewAccount:
        now = self.clock()
        account_id = "acct_" + secrets.token_hex(8)
        number = new_account_number()
        key = new_api_key()

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO accounts (id, name, number_hash, number_last4, tier, enabled, created_at, tier_changed_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (account_id, name, hash_secret(number), number[-4:], tier, now, now),
            )
            conn.execute("INSERT INTO api_keys (hash, account_id, prefix, created_at) VALUES (?, ?, ?, ?)",
                         (hash_secret(key), account_id, key[:7], now))

        self._write(tx)
        account = Account(account_id, name, number[-4:], tier, True, now, now)
        return NewAccount(account, number, key)

    def get(self, account_id: str) -> Account | None:
        row = self._reader().execute(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return _account(row) if row else None

    def find(self, ref: str) -> Account | None:
        """By id, by full account number, or by the last 4 digits if unique."""
        account = self.get(ref)
        if account is not None:
            return account
        if NUMBER_RE.match(ref):
            return self.by_account_number(ref)
        if re.fullmatch(r"[0-9]{4}", ref):
            rows = self._reader().execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE number_last4 = ?", (ref,)).fetchall()
            if len(rows) == 1:
                return _account(rows[0])
        return None

    def list(self) -> list[Account]:
        rows = self._reader().execute(f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_at").fetchall()
        return [_account(r) for r in rows]

    def by_api_key(self, key: str) -> Account | None:
        digest = hash_secret(key)
        row = self._reader().execute(
            f"SELECT k.hash, {', '.join('a.' + c.strip() for c in _ACCOUNT_COLS.split(','))} "
            "FROM api_keys k JOIN accounts a ON a.id = k.account_id "
            "WHERE k.hash = ? AND k.revoked_at IS NULL", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return _account(row[1:])

    def by_account_number(self, number: str) -> Account | None:
        digest = hash_secret(number)
        row = self._reader().execute(
            f"SELECT number_hash, {_ACCOUNT_COLS} FROM accounts WHERE number_hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return _account(row[1:])

    def rotate_key(self, account_id: str) -> str:
        """A new key; every previous key of the account stops working now."""
        now = self.clock()
        key = new_api_key()

        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise KeyError(account_id)
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL",
                         (now, account_id))
            conn.execute("INSERT INTO api_keys (hash, account_id, prefix, created_at) VALUES (?, ?, ?, ?)",
                         (hash_secret(key), account_id, key[:7], now))

        self._write(tx)
        return key

    def set_tier(self, account_id: str, tier: int, reason: str = "manual") -> Account:
        now = self.clock()

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT tier FROM accounts WHERE id = ?", (account_id,)).fetchone()
            if row is None:
                raise KeyError(account_id)
            conn.execute("UPDATE accounts SET tier = ?, tier_changed_at = ? WHERE id = ?", (tier, now, account_id))
            conn.execute("INSERT INTO tier_changes (account_id, at, old_tier, new_tier, reason) VALUES (?, ?, ?, ?, ?)",
                         (account_id, now, int(row[0]), tier, reason))

        self._write(tx)
        return self.get(account_id)  # type: ignore[return-value]

    def set_enabled(self, account_id: str, enabled: bool) -> Account:
        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE accounts SET enabled = ? WHERE id = ?", (1 if enabled else 0, account_id))
            if cur.rowcount == 0:
                raise KeyError(account_id)

        self._write(tx)
        return self.get(account_id)  # type: ignore[return-value]

    # -- usage ---------------------------------------------------------------

    def record(self, row: LedgerRow, upgrade: Callable[[sqlite3.Connection, str, str], int | None] | None = None
               ) -> int | None:
        """Append a ledger row (and the day's totals) in one transaction;
        ``upgrade(conn, account_id, day)`` may promote the account in the same
        transaction. Returns the new tier if it changed."""
        day = utc_day(row.finished_at)
        counted = row.outcome != "rejected"

        def tx(conn: sqlite3.Connection) -> int | None:
            conn.execute(
                "INSERT INTO ledger (account_id, model, prompt_tokens, completion_tokens, reserved_tokens, outcome,"
                " wire_format, started_at, finished_at, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.account_id, row.model, row.prompt_tokens, row.completion_tokens, row.reserved_tokens,
                 row.outcome, row.wire_format, row.started_at, row.finished_at, day))
            if counted:
                conn.execute(
                    "INSERT INTO usage_daily (account_id, day, requests, prompt_tokens, completion_tokens)"
                    " VALUES (?, ?, 1, ?, ?) ON CONFLICT(account_id, day) DO UPDATE SET"
                    " requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                    " completion_tokens = completion_tokens + excluded.completion_tokens",
                    (row.account_id, day, row.prompt_tokens, row.completion_tokens))
                if upgrade is not None:
                    return upgrade(conn, row.account_id, day)
            return None

        return self._write(tx)

    def daily_usage(self, day: str) -> list[tuple[str, int, int]]:
        """(account_id, requests, tokens) for every account with usage on ``day``."""
        rows = self._reader().execute(
            "SELECT account_id, requests, prompt_tokens + completion_tokens FROM usage_daily WHERE day = ?",
            (day,)).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def usage(self, account_id: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Ledger totals per account and outcome (since ``since``)."""
        where, args = [], []
        if account_id:
            where.append("account_id = ?")
            args.append(account_id)
        if since is not None:
            where.append("finished_at >= ?")
            args.append(since)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._reader().execute(
            "SELECT account_id, outcome, count(*), sum(prompt_tokens), sum(completion_tokens) "
            f"FROM ledger {clause} GROUP BY account_id, outcome ORDER BY account_id, outcome", args).fetchall()
        return [{"account_id": r[0], "outcome": r[1], "requests": int(r[2]),
                 "prompt_tokens": int(r[3] or 0), "completion_tokens": int(r[4] or 0)} for r in rows]

    def ledger(self, account_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        args: Iterable[Any] = (account_id, limit) if account_id else (limit,)
        clause = "WHERE account_id = ?" if account_id else ""
        rows = self._reader().execute(
            "SELECT id, account_id, model, prompt_tokens, completion_tokens, reserved_tokens, outcome, wire_format,"
            f" started_at, finished_at FROM ledger {clause} ORDER BY id DESC LIMIT ?", tuple(args)).fetchall()
        keys = ("id", "account_id", "model", "prompt_tokens", "completion_tokens", "reserved_tokens", "outcome",
                "wire_format", "started_at", "finished_at")
        return [dict(zip(keys, r)) for r in rows]

    # -- self-service and paging (GET /v1/account, GET /admin/accounts?q=) ------

    def daily_totals(self, account_id: str, since_day: str) -> list[tuple[str, int, int, int]]:
        """(day, requests, prompt_tokens, completion_tokens) per UTC day from ``since_day`` on."""
        rows = self._reader().execute(
            "SELECT day, requests, prompt_tokens, completion_tokens FROM usage_daily"
            " WHERE account_id = ? AND day >= ? ORDER BY day", (account_id, since_day)).fetchall()
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def days_reaching(self, account_id: str, since_day: str, requests: int | None, tokens: int | None,
                      conn: sqlite3.Connection | None = None) -> int:
        """How many days since ``since_day`` reached ``requests`` or ``tokens``
        (None: that dimension does not count), as the upgrade rule counts them.
        ``conn``: the writer inside a transaction (to see its own rows)."""
        if requests is None and tokens is None:
            return 0
        return int((conn or self._reader()).execute(
            "SELECT count(*) FROM usage_daily WHERE account_id = ? AND day >= ? AND"
            " (requests >= ? OR prompt_tokens + completion_tokens >= ?)",
            (account_id, since_day, requests if requests is not None else 2**62,
             tokens if tokens is not None else 2**62)).fetchone()[0])

    def page(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[int, list[Account]]:
        """(how many match, one page of them, oldest first): ``query`` matches
        the id, the name (substring, case-insensitive) or the last 4 digits."""
        where, args = "", []
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where = "WHERE id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\' OR number_last4 = ?"
            args = [pattern, pattern, query]
        reader = self._reader()
        total = int(reader.execute(f"SELECT count(*) FROM accounts {where}", args).fetchone()[0])
        rows = reader.execute(f"SELECT {_ACCOUNT_COLS} FROM accounts {where} ORDER BY created_at, id"
                              " LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return total, [_account(r) for r in rows]
