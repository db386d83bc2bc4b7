"""One app's accounts, counters and admin key (per kernel, no module state)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from adyton import Database, Forbidden, Principal, Unauthorized

from .limiter import AccountLimiter, Counters
from .settings import LimitsSettings
from .store import (
    KEY_RE,
    NUMBER_RE,
    Account,
    AccountStore,
    LedgerRow,
    accounts,
    hash_secret,
    tier_changes,
    usage_daily,
    utc_day,
)

if TYPE_CHECKING:  # pragma: no cover
    from adyton import Kernel

log = logging.getLogger("adyton.limits")

T = TypeVar("T")


class LimitsService:
    def __init__(self, kernel: Kernel, clock: Callable[[], float] | None = None) -> None:
        self.kernel = kernel
        self.settings: LimitsSettings = kernel.section("limits", LimitsSettings)
        self.clock: Callable[[], float] = clock or time.time
        home = Path(kernel.home)
        self.admin_key_path = Path(self.settings.admin_key_file or home / "limits" / "admin.key").expanduser()
        self.db, self._own_db = self._choose_database(home)
        self.store = AccountStore(self.db, clock=self.clock)
        #: run database reads on the event loop instead of the kernel's
        #: workers. Off on every database: on SQLite inline saves ~0.1 ms per
        #: authentication (docs/benchmarks.md), not worth a loop that can
        #: still wait (busy_timeout, a cold ledger aggregation); the
        #: benchmark (bench/limits_overhead.py --reads) sets it to compare
        self.reads_inline = False
        self.limiter = AccountLimiter(self)
        self._counters: Counters | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._admin_hash: str | None = None
        self._metrics_hash: str | None = None
        self._opened = False
        #: names this process in its slot entries (host, pid, random)
        self.server_id = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        #: in-flight slots this server holds and renews: member -> key
        self.held_slots: dict[str, str] = {}
        #: ledger rows the database refused (disk full), oldest first, and why
        self.pending_rows: collections.deque[LedgerRow] = collections.deque()
        self.ledger_error: str | None = None
        self._flusher: asyncio.Task[Any] | None = None

    def _choose_database(self, home: Path) -> tuple[Database, bool]:
        """Where the accounts live, and whether this plugin opened it (and
        disposes it): ``limits.db_url``; else ``limits.db_path``; else the
        file of the releases that kept accounts in their own SQLite file,
        ``$ADYTON_HOME/limits/accounts.sqlite3``, while it exists (so an
        upgrade keeps its accounts); else the kernel's ``[database]``."""
        synchronous = self.settings.sqlite_synchronous
        if self.settings.db_url:
            return Database(self.settings.db_url, sqlite_synchronous=synchronous), True
        legacy = Path(self.settings.db_path or home / "limits" / "accounts.sqlite3").expanduser()
        if self.settings.db_path is not None or legacy.exists():
            return Database.sqlite(legacy, sqlite_synchronous=synchronous), True
        return self.kernel.database, False

    @property
    def db_path(self) -> Path | None:
        """The SQLite file holding the accounts (None on PostgreSQL)."""
        return self.db.path

    # -- lifecycle -------------------------------------------------------------

    def open_store(self) -> AccountStore:
        """Open the database (synchronous; the CLI uses this alone)."""
        if not self._opened:
            self.store.open()
            self._opened = True
        return self.store

    @property
    def counters(self) -> Counters:
        """The rate-limit counters (memory or Redis), made by ``startup``."""
        if self._counters is None:
            raise RuntimeError("adyton-limits has not started: its counters are made at app startup")
        return self._counters

    @counters.setter
    def counters(self, counters: Counters) -> None:  # (tests put a storage that is down in its place)
        self._counters = counters

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adyton-limits-db")
        await loop.run_in_executor(self._writer, self.open_store)
        counters = self._counters = Counters(self.settings.storage_uri, self.settings.key_prefix,
                                             max_connections=self.settings.redis_max_connections,
                                             pool_timeout_s=self.settings.redis_pool_timeout_s,
                                             timeout_s=self.settings.redis_timeout_s)
        await counters.check()
        self.spawn(self._renew_slots())
        if not counters.shared:
            today = utc_day(self.clock())
            await self.limiter.seed_daily(today, await self.read(self.store.daily_usage, today), self.clock())
        self.ensure_admin_key()
        self.load_metrics_token()
        log.info("adyton-limits: accounts in %s; counters in %s", self.db.display_url, self.settings.storage_uri)
        log.info("adyton-limits: admin API key is in %s (send 'Authorization: Bearer <key>' to /admin/...)",
                 self.admin_key_path)
        if self.settings.signup_enabled:
            log.warning("adyton-limits: public sign-up is ON: POST /create-account creates accounts")

    async def _renew_slots(self) -> None:
        """Renew the leases of the slots this server holds, every third of
        ``slot_lease_s``; a server that stops renewing (killed) loses them."""
        lease = self.settings.slot_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            held = [(key, member) for member, key in list(self.held_slots.items())]
            try:
                await self.counters.slot_renew(held, lease)
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("adyton-limits: renewing %d in-flight slots failed: %r", len(held), exc)

    def spawn(self, coro: Any) -> None:
        """Run background bookkeeping (e.g. a slot release being retried);
        shutdown cancels what is still running."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.pending_rows:  # one last try, then say exactly what is lost
            try:
                while self.pending_rows:
                    await self._in_writer(self._write_oldest_kept)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                for row in self.pending_rows:
                    log.error("adyton-limits: ledger row LOST at shutdown (%s): %s", exc,
                              json.dumps(dataclasses.asdict(row)))
                self.pending_rows.clear()
        if self._counters is not None:
            try:
                await self._counters.close()
            except Exception:
                log.exception("closing the limits storage failed")
        if self._writer is not None:
            self._writer.submit(self.store.close).result()
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._own_db:
            self.db.dispose()
        self._opened = False

    async def in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a database write in the one writer thread. A database that
        cannot be written (disk full, I/O error, locked too long) is a 503
        (the reason goes to the log, not to the caller: a database error
        names hosts, ports and paths), not a 500."""
        with self.db.refused_as_503("the accounts database cannot be written; try again later",
                                    code="accounts_db_unavailable"):
            return await self._in_writer(fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a database read (``self.store``'s lookups) off the event loop,
        on the kernel's workers (``kernel.offload``): on PostgreSQL a round
        trip, or a lock the query waits for, must not stall every request on
        this server, ``/health`` and streams in flight included. A database
        that cannot be read (server gone, disk error) is a 503, not a 500
        (the reason goes to the log: a caller not yet authenticated is told
        nothing about the database)."""
        with self.db.refused_as_503("the accounts database cannot be read; try again later",
                                    code="accounts_db_unavailable"):
            if self.reads_inline:
                return fn(*args)
            return await self.kernel.offload(fn, *args)

    async def _in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._writer is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    # -- admin key -------------------------------------------------------------

    def ensure_admin_key(self) -> Path:
        path = self.admin_key_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write("adm-" + secrets.token_urlsafe(32) + "\n")
            log.info("adyton-limits: generated a new admin API key in %s", path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
        key = path.read_text().strip()
        if not key:
            raise RuntimeError(f"the admin key file {path} is empty")
        self._admin_hash = hash_secret(key)
        return path

    def load_metrics_token(self) -> None:
        """The metrics-only token, if ``metrics_token_file`` is set (it must
        exist and hold a token: a typo must not silently open nothing)."""
        path = self.settings.metrics_token_file
        if path is None:
            return
        token = Path(path).expanduser().read_text().strip()
        if len(token) < 16:
            raise RuntimeError(f"limits.metrics_token_file {path} must hold a token of 16 or more characters")
        self._metrics_hash = hash_secret(token)

    async def authorize(self, kind: str, secret: str, access: str) -> Principal:
        """Read-only access: "admin" needs the admin key, "metrics" the admin
        key or the metrics token, "user" any valid account credential (or
        either of those keys)."""
        secret = secret.strip()
        if kind != "account_number" and self.check_admin_key(secret):
            return Principal(id="admin", display_name="admin key", attributes={"credential": "admin_key"})
        if kind != "account_number" and self._metrics_hash is not None and access == "metrics" \
                and hmac.compare_digest(hash_secret(secret), self._metrics_hash):
            return Principal(id="metrics", display_name="metrics token", attributes={"credential": "metrics_token"})
        if access == "user":
            return await self.authenticate(kind, secret)
        needed = "the admin key" if access == "admin" else "the admin key or the metrics token"
        raise Forbidden(f"this route needs {needed} (Authorization: Bearer ...)", code="insufficient_access")

    def check_admin_key(self, presented: str | None) -> bool:
        if not presented or self._admin_hash is None:
            return False
        return hmac.compare_digest(hash_secret(presented.strip()), self._admin_hash)

    # -- auth --------------------------------------------------------------------

    async def authenticate(self, kind: str, secret: str) -> Principal:
        account = await self.account_for(kind, secret)
        return Principal(
            id=account.id,
            display_name=account.name or account.id,
            tier=str(account.tier),
            attributes={"account_number_last4": account.number_last4, "credential": kind},
        )

    async def account_for(self, kind: str, secret: str) -> Account:
        """The enabled account an API key or account number belongs to, read
        from the database now (off the event loop: ``read``); nothing is
        cached, so a key rotated on another server is refused at once."""
        secret = secret.strip()
        if not secret:
            raise Unauthorized("missing credentials: send an API key (Authorization: Bearer sk-...) "
                               "or your 64-digit account number", code="missing_api_key")
        store = self.store
        if kind == "account_number" or secret.isdigit():
            if not NUMBER_RE.match(secret):
                raise Unauthorized(f"malformed account number: expected 64 digits, got {len(secret)} characters",
                                   code="invalid_account_number")
            account = await self.read(store.by_account_number, secret)
            if account is None:
                raise Unauthorized("unknown account number", code="invalid_account_number")
        else:
            if not KEY_RE.match(secret):
                raise Unauthorized("malformed API key: expected 'sk-' followed by letters, digits, '-' or '_'",
                                   code="invalid_api_key")
            account = await self.read(store.by_api_key, secret)
            if account is None:
                raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
        if not account.enabled:
            raise Unauthorized(f"account {account.id} is disabled", code="account_disabled")
        return account

    # -- ledger + upgrades -------------------------------------------------------

    async def record(self, row: LedgerRow) -> None:
        """Write ``row`` to the ledger. If the database cannot take it (disk
        full, I/O error), the row is kept in memory (and logged) and written
        by a background flush once the disk has room again; meanwhile
        ``ledger_error`` is set and the limiter refuses new work with 503,
        so the rows waiting are at most the requests that were in flight."""
        if self.pending_rows:  # keep the order: behind the rows already waiting
            self._keep(row, self.ledger_error or "the ledger is not writable")
            return
        try:
            await self._write_row(row)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self._keep(row, f"{type(exc).__name__}: {exc}")

    async def _write_row(self, row: LedgerRow) -> None:
        await self._in_writer(self._record_now, row)

    def _record_now(self, row: LedgerRow) -> None:
        """Writer thread: one ledger row (and a promotion it earns)."""
        upgrade = self._upgrade if self.settings.upgrade.enabled else None
        new_tier = self.store.record(row, upgrade)
        if new_tier is not None:
            log.info("adyton-limits: account %s promoted to tier %s by usage", row.account_id, new_tier)

    def _write_oldest_kept(self) -> None:
        """Writer thread: write the oldest kept row, then drop it — in the
        writer thread, so a write that completes after its awaiting task was
        cancelled (shutdown) is dropped too and never written twice."""
        self._record_now(self.pending_rows[0])
        self.pending_rows.popleft()

    def _keep(self, row: LedgerRow, error: str) -> None:
        if self.ledger_error is None:
            log.error("adyton-limits: the usage ledger %s cannot be written (%s): refusing new requests "
                      "with 503 until it can; rows are kept in memory meanwhile", self.db.display_url, error)
        self.ledger_error = error
        if len(self.pending_rows) >= self.settings.ledger_buffer_rows:
            log.error("adyton-limits: ledger row LOST (%d rows already wait): %s", len(self.pending_rows),
                      json.dumps(dataclasses.asdict(row)))
        else:
            self.pending_rows.append(row)
            log.warning("adyton-limits: ledger row kept in memory until the database takes it: %s",
                        json.dumps(dataclasses.asdict(row)))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_pending())
            self._background.add(self._flusher)
            self._flusher.add_done_callback(self._background.discard)

    async def _flush_pending(self) -> None:
        """Write the kept rows, oldest first, retrying (0.5 s, backing off to
        5 s) until the database takes them all; then admit work again."""
        delay = 0.5
        while self.pending_rows:
            await asyncio.sleep(delay)
            try:
                while self.pending_rows:
                    await self._in_writer(self._write_oldest_kept)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                self.ledger_error = f"{type(exc).__name__}: {exc}"
                delay = min(2 * delay, 5.0)
        self.ledger_error = None
        log.info("adyton-limits: the usage ledger is writable again; every kept row is written")

    def _upgrade(self, conn: sa.Connection, account_id: str, day: str) -> int | None:
        """Inside the ledger transaction: promote ``account_id`` one tier if
        it used >= share of its daily quota on >= days days since its last
        tier change. The account's row is locked (PostgreSQL: FOR UPDATE), so
        servers settling at once promote it once."""
        rule = self.settings.upgrade
        tiers = self.settings.tiers
        row = conn.execute(sa.select(accounts.c.tier, accounts.c.tier_changed_at)
                           .where(accounts.c.id == account_id).with_for_update()).first()
        if row is None:
            return None
        tier, changed_at = int(row[0]), float(row[1])
        higher = sorted(t for t in tiers if t > tier)
        if not higher or higher[0] > rule.max_tier or tier not in tiers:
            return None
        req, tok = rule.thresholds(tiers[tier])
        if req is None and tok is None:
            return None
        u = usage_daily.c
        today = conn.execute(sa.select(u.requests, u.prompt_tokens + u.completion_tokens)
                             .where(u.account_id == account_id, u.day == day)).first()
        if today is None or not ((req is not None and today[0] >= req) or (tok is not None and today[1] >= tok)):
            return None  # today does not count (yet): nothing new to decide
        n = self.store.days_reaching(account_id, utc_day(changed_at), req, tok, conn)
        if n < rule.days:
            return None
        new = higher[0]
        now = self.clock()
        conn.execute(accounts.update().where(accounts.c.id == account_id).values(tier=new, tier_changed_at=now))
        conn.execute(tier_changes.insert().values(
            account_id=account_id, at=now, old_tier=tier, new_tier=new,
            reason=f"usage: {n} days >= {rule.share:.0%} of the daily quota"))
        return new
