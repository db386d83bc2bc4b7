"""A real PostgreSQL server for tests: ``start_postgres() -> PostgresServer``.

Debian's PostgreSQL (``make postgresql`` installs it) is started as a
throw-away cluster: ``initdb`` into a fresh directory under the system temp
dir, ``postgres`` listening on 127.0.0.1 on a free port (its Unix socket in
that directory, never /var/run), trust authentication for the ``postgres``
superuser. PostgreSQL refuses to run as root, so when the tests run as root
the cluster belongs to, and runs as, the ``postgres`` system user
(``runuser -u postgres``); otherwise it runs as the current user.

    server = start_postgres()
    try:
        url = server.create_database()      # a fresh, empty database
        engine = sqlalchemy.create_engine(url)
        ...
    finally:
        server.stop()

or ``with postgres_server() as server: ...``. Starting waits at most
``start_timeout_s``; ``stop()`` is a fast shutdown, bounded too, and removes
the directory. A cluster a crashed test leaves running is stopped at
interpreter exit. ``PostgresUnavailable`` says why no server could start
(no PostgreSQL installed, no ``postgres`` user while root): fixtures skip or
fail on it.

The URLs use SQLAlchemy's ``postgresql+psycopg://`` driver name (psycopg 3),
the one ``[database] url`` and ``limits.db_url`` take.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_postgres_bin", "postgres_server", "start_postgres"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why)."""


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``
    (``ADYTON_PG_BIN``, else Debian's newest /usr/lib/postgresql/N/bin, else PATH)."""
    env = os.environ.get("ADYTON_PG_BIN")
    candidates = [env] if env else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True)
    candidates += versions
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(str(Path(which).parent))
    for cand in candidates:
        if cand and all((Path(cand) / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(cand)
    raise PostgresUnavailable(
        "PostgreSQL is not installed (make postgresql, or apt-get install postgresql; "
        "or point ADYTON_PG_BIN at the directory holding initdb, pg_ctl and postgres)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running throw-away cluster. ``url`` is its ``postgres`` database."""

    url: str
    host: str
    port: int
    user: str
    data_dir: Path
    _bin: Path = field(repr=False)
    _run_as: list[str] = field(repr=False, default_factory=list)
    _stopped: bool = field(default=False, repr=False)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh random name by default); its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:12]
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (bounded), then remove the cluster's directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            subprocess.run([*self._run_as, str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir),
                            "-m", "fast", "-w", "-t", str(int(timeout_s))],
                           capture_output=True, timeout=timeout_s + 10, check=False)
        except subprocess.TimeoutExpired:
            subprocess.run([*self._run_as, str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir),
                            "-m", "immediate", "-w", "-t", "10"], capture_output=True, timeout=20, check=False)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(tmp_path: os.PathLike | str | None = None, *, start_timeout_s: float = 60.0) -> PostgresServer:
    """initdb + start a cluster on 127.0.0.1 on a free port; return it running.

    ``tmp_path`` is accepted for symmetry with pytest fixtures but the cluster
    lives in its own directory under the system temp dir: pytest's tmp_path is
    private to root and the ``postgres`` user could not reach it."""
    del tmp_path
    pg_bin = find_postgres_bin()
    run_as: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser(1) is missing")
        run_as = [runuser, "-u", "postgres", "--"]
        owner = (pw.pw_uid, pw.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="adyton-pg-"))
    data_dir = base / "data"
    data_dir.mkdir()
    if owner is not None:
        for p in (base, data_dir):
            os.chown(p, *owner)
    os.chmod(base, 0o755)
    log = base / "server.log"
    if owner is not None:
        log.touch()
        os.chown(log, *owner)
    try:
        init = subprocess.run([*run_as, str(pg_bin / "initdb"), "-D", str(data_dir), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                              capture_output=True, text=True, timeout=120, check=False)
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        last_error = ""
        for _attempt in range(3):  # a free port may be taken between the probe and the bind
            port = _free_port()
            opts = (f"-h 127.0.0.1 -p {port} -k {data_dir} -c fsync=off -c full_page_writes=off "
                    "-c synchronous_commit=off -c max_connections=200")
            started = subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "start", "-D", str(data_dir), "-w",
                                      "-t", str(int(start_timeout_s)), "-l", str(log), "-o", opts],
                                     capture_output=True, text=True, timeout=start_timeout_s + 30, check=False)
            if started.returncode == 0:
                server = PostgresServer(url="", host="127.0.0.1", port=port, user="postgres",
                                        data_dir=data_dir, _bin=pg_bin, _run_as=run_as)
                server.url = server.url_for("postgres")
                atexit.register(server.stop)
                return server
            last_error = (log.read_text(errors="replace")[-2000:] if log.exists() else "") or started.stderr
        raise PostgresUnavailable(f"postgres did not start on 127.0.0.1: {last_error.strip()}")
    except BaseException:
        subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate"],
                       capture_output=True, timeout=30, check=False)
        shutil.rmtree(base, ignore_errors=True)
        raise


@contextlib.contextmanager
def postgres_server(**kwargs) -> Iterator[PostgresServer]:
    """``start_postgres`` as a context manager: stopped on exit."""
    server = start_postgres(**kwargs)
    try:
        yield server
    finally:
        server.stop()
