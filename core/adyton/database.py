"""The kernel's SQL database: ``kernel.database`` (``[database] url``).

Plugins must not depend on each other, so persistence is a kernel facility:
one ``Database`` — a SQLAlchemy Core ``Engine`` (SQLite by default, in
``$ADYTON_HOME/adyton.sqlite3``; PostgreSQL by URL, ``postgresql+psycopg://``)
created on first use and disposed at shutdown. Each plugin owns its tables
and its Alembic migrations, with its own version table
(``alembic_version_<plugin>``), and brings its schema up to date with
``Database.upgrade(versions_dir, version_table)`` — at its ``startup`` and in
``adyton db upgrade`` (the ``register_migrations`` hook lists them).

One code path for both databases: write with ``with db.transaction() as
conn:`` (SQLite: ``BEGIN IMMEDIATE``, so a transaction that reads then writes
never loses a race with another process; PostgreSQL: one transaction, read
committed), read with ``with db.connect() as conn:``. Calls block: run them
off the event loop (``kernel.offload`` or a plugin's own worker thread).
A write the database refuses (disk full, server gone) raises
``sqlalchemy.exc.OperationalError`` / ``DBAPIError``; ``Database.unavailable``
tells those from programming errors.

A statement never waits for a lock longer than ``lock_timeout_s`` (``[database]
lock_timeout_s``, 10 s): SQLite's busy timeout, PostgreSQL's ``lock_timeout``.
Past it the statement fails as ``unavailable`` (a 503 to the caller), so a lock
someone holds on a shared database cannot hold the kernel's worker threads,
and with them every offloaded read, for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from .errors import ServiceUnavailable, SettingsError

__all__ = ["Database", "sqlite_url"]

log = logging.getLogger("adyton.database")
# alembic announces each of its own extensions at INFO on every start; the
# migrations it runs ("Running upgrade ...") stay visible
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

_MIGRATIONS_ENV = Path(__file__).parent / "_migrations"


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return "sqlite:///" + str(Path(path).expanduser().absolute())


class Database:
    """A SQLAlchemy engine for one URL, created lazily; see the module doc."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL", pool_size: int = 5,
                 lock_timeout_s: float = 10.0) -> None:
        try:
            self._url = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise SettingsError(f"not a database URL: {url!r} ({exc})") from None
        if self._url.get_backend_name() not in ("sqlite", "postgresql"):
            raise SettingsError(f"database URL {self.display_url}: only sqlite:/// and postgresql+psycopg:// "
                                "are supported")
        if self._url.get_backend_name() == "postgresql" and "+" not in self._url.drivername:
            # postgresql:// alone means psycopg2 to SQLAlchemy 2.0, which adyton does not install
            self._url = self._url.set(drivername="postgresql+psycopg")
        self.sqlite_synchronous = sqlite_synchronous
        self.pool_size = pool_size
        self.lock_timeout_s = lock_timeout_s
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @classmethod
    def sqlite(cls, path: str | Path, **kwargs: Any) -> Database:
        """The database of a SQLite file (created on first use)."""
        return cls(sqlite_url(path), **kwargs)

    # -- what it is ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL, password included (for engines; never log it)."""
        return self._url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for logs and errors."""
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self._url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def path(self) -> Path | None:
        """The file of a SQLite database (None for a server or ``:memory:``)."""
        if not self.is_sqlite or not self._url.database or self._url.database == ":memory:":
            return None
        return Path(self._url.database)

    # -- the engine ---------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, created on first use (SQLite: the file's directory too)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        if self.is_sqlite:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            engine = sa.create_engine(self.url, pool_size=self.pool_size, max_overflow=10,
                                      connect_args={"timeout": self.lock_timeout_s, "check_same_thread": False})
            synchronous = self.sqlite_synchronous

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                # SQLAlchemy emits BEGIN itself (below): the driver must not
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout_s * 1000)}")
                cur.execute(f"PRAGMA synchronous = {synchronous}")
                cur.execute("PRAGMA foreign_keys = ON")
                mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                cur.close()
                if str(mode).lower() not in ("wal", "memory"):  # pragma: no cover - e.g. a network filesystem
                    raise RuntimeError(f"could not switch {self.path} to WAL mode (got {mode})")

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                write = conn.get_execution_options().get("adyton_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return sa.create_engine(self.url, pool_size=self.pool_size, max_overflow=20, pool_pre_ping=True,
                                connect_args={"connect_timeout": 10,
                                              "options": f"-c lock_timeout={int(self.lock_timeout_s * 1000)}"})

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed at the end of the block, rolled
        back if it raises (SQLite: ``BEGIN IMMEDIATE``)."""
        with self.engine.connect() as conn:
            conn.execution_options(adyton_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (each statement sees committed data)."""
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection (shutdown); the next use reconnects."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    @staticmethod
    def unavailable(exc: BaseException) -> bool:
        """Is ``exc`` the database refusing work (disk full, I/O error, locked,
        server unreachable), as opposed to a bug? Those are 503s."""
        return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, OSError)) or (
            isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated)

    @contextlib.contextmanager
    def refused_as_503(self, message: str, *, code: str, retry_after: float = 10.0) -> Iterator[None]:
        """Inside the block, the database refusing work (``unavailable``) is
        raised as a 503 ``ServiceUnavailable(message, code=code)`` with
        Retry-After; the driver's own message (hosts, ports, paths) goes to
        the log, never to the caller. Anything else passes through::

            with kernel.database.refused_as_503("the ledger cannot be read; try again later",
                                                code="ledger_unavailable"):
                rows = await kernel.offload(read_rows)
        """
        try:
            yield
        except Exception as exc:
            if not self.unavailable(exc):
                raise
            log.error("%s: the database %s refused the work: %s", code, self.display_url, exc)
            raise ServiceUnavailable(message, code=code, retry_after=retry_after) from None

    # -- migrations ---------------------------------------------------------------

    def upgrade(self, versions: str | Path, version_table: str, target: str = "head") -> str | None:
        """Bring one plugin's tables to ``target`` with Alembic: the revisions
        in the ``versions`` directory, recorded in ``version_table``. Servers
        starting at once on one PostgreSQL database take turns (an advisory
        lock). Returns the revision now current."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS_ENV))
        cfg.set_main_option("version_locations", str(Path(versions)))
        cfg.set_main_option("path_separator", "os")
        with self.transaction() as conn:
            if not self.is_sqlite:
                lock_id = int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big", signed=True)
                # another server migrating, or a session holding a table, is
                # waited for: lock_timeout_s is for requests, not for startup
                conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = version_table
            command.upgrade(cfg, target)
            return self.current_revision(conn, version_table)

    @staticmethod
    def current_revision(conn: Connection, version_table: str) -> str | None:
        """The revision recorded in ``version_table`` (None: never migrated)."""
        if not sa.inspect(conn).has_table(version_table):
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {version_table}")).scalar()

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"
