"""adyton.Database: one SQLAlchemy code path for SQLite and PostgreSQL, and
per-plugin Alembic migrations with their own version tables."""

from __future__ import annotations

import hashlib
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from adyton import create_app, hookimpl
from adyton.database import Database
from adyton.errors import PluginError, SettingsError

REV1 = '''
import sqlalchemy as sa
from alembic import op
revision = "{p}1"
down_revision = None
branch_labels = None
depends_on = None
def upgrade():
    op.create_table("{p}_things", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
'''
REV2 = '''
import sqlalchemy as sa
from alembic import op
revision = "{p}2"
down_revision = "{p}1"
branch_labels = None
depends_on = None
def upgrade():
    op.add_column("{p}_things", sa.Column("size", sa.Integer, nullable=False, server_default="0"))
'''


def versions(tmp_path, plugin, *revs):
    d = tmp_path / f"versions_{plugin}"
    d.mkdir(exist_ok=True)
    for n, rev in enumerate(revs, 1):
        (d / f"{plugin}{n}.py").write_text(textwrap.dedent(rev.format(p=plugin)))
    return d


@pytest.fixture
def pg(postgres_server):
    """The session's PostgreSQL cluster (adyton's pytest plugin)."""
    return postgres_server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/sub/dir/db.sqlite3")
    else:
        database = Database(request.getfixturevalue("pg").create_database())
    yield database
    database.dispose()


def test_plugins_migrate_independently_and_upgrades_are_idempotent(db, tmp_path):
    a1 = versions(tmp_path, "a", REV1)
    b = versions(tmp_path, "b", REV1)
    assert db.upgrade(a1, "alembic_version_a") == "a1"
    assert db.upgrade(b, "alembic_version_b") == "b1"
    assert db.upgrade(a1, "alembic_version_a") == "a1"  # nothing to do
    with db.transaction() as conn:
        conn.execute(sa.text("INSERT INTO a_things (name) VALUES ('kept')"))
    # a new revision of plugin a: its rows stay, b is untouched
    versions(tmp_path, "a", REV1, REV2)
    assert db.upgrade(a1, "alembic_version_a") == "a2"
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT name, size FROM a_things")).all() == [("kept", 0)]
        assert Database.current_revision(conn, "alembic_version_b") == "b1"
        assert Database.current_revision(conn, "alembic_version_c") is None


def test_a_failed_transaction_writes_nothing(db, tmp_path):
    db.upgrade(versions(tmp_path, "a", REV1), "alembic_version_a")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute(sa.text("INSERT INTO a_things (name) VALUES ('lost')"))
        raise RuntimeError("boom")
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM a_things")).scalar() == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_statement_waits_for_a_lock_at_most_lock_timeout_s(kind, tmp_path, request):
    """[database] lock_timeout_s: a lock another connection holds makes a
    statement fail as ``unavailable`` (a 503 to callers) once the timeout
    has passed, instead of holding a worker thread for as long as the lock."""
    url = (f"sqlite:///{tmp_path}/db.sqlite3" if kind == "sqlite"
           else request.getfixturevalue("pg").create_database())
    holder, db = Database(url), Database(url, lock_timeout_s=0.5)
    try:
        holder.upgrade(versions(tmp_path, "a", REV1), "alembic_version_a")
        with holder.transaction() as conn:  # SQLite: BEGIN IMMEDIATE holds the write lock
            if kind == "postgresql":
                conn.execute(sa.text("LOCK TABLE a_things IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as refused, db.transaction() as waiting:
                waiting.execute(sa.text("INSERT INTO a_things (name) VALUES ('late')"))
            waited = time.monotonic() - started
        assert Database.unavailable(refused.value)
        assert 0.4 < waited < 5, waited
        with db.transaction() as conn:  # the lock gone, the same write goes through
            conn.execute(sa.text("INSERT INTO a_things (name) VALUES ('late')"))
    finally:
        db.dispose()
        holder.dispose()


def test_a_migration_waits_for_another_servers_migration_past_lock_timeout_s(tmp_path, pg):
    """Servers starting at once take turns on one PostgreSQL database; the
    one that waits is not cut off by lock_timeout_s (that is for requests)."""
    url = pg.create_database()
    first, second = Database(url), Database(url, lock_timeout_s=0.2)
    revs = versions(tmp_path, "a", REV1)
    try:
        with first.transaction() as conn:  # "another server" mid-migration: it holds the version table's turn
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                         {"k": int.from_bytes(hashlib.sha256(b"alembic_version_a").digest()[:8], "big", signed=True)})
            waiting = threading.Thread(target=second.upgrade, args=(revs, "alembic_version_a"))
            waiting.start()
            time.sleep(0.6)  # three lock timeouts
            assert waiting.is_alive()
        waiting.join(30)
        assert not waiting.is_alive()
        assert second.upgrade(revs, "alembic_version_a") == "a1"
    finally:
        first.dispose()
        second.dispose()


def test_refused_as_503_turns_only_the_databases_refusals_into_a_503(tmp_path, caplog):
    from adyton import ServiceUnavailable

    db = Database(f"sqlite:///{tmp_path}/db.sqlite3")
    try:
        with pytest.raises(ServiceUnavailable) as refused, \
                db.refused_as_503("the things cannot be read; try again later", code="things_unavailable"), \
                db.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            raise sa.exc.OperationalError("SELECT 1", {}, Exception(f"disk I/O error at {tmp_path}"))
        assert refused.value.status == 503 and refused.value.code == "things_unavailable"
        assert refused.value.message == "the things cannot be read; try again later"  # no driver text
        assert refused.value.retry_after == 10.0
        assert "disk I/O error" in caplog.text  # the reason is in the log
        with pytest.raises(KeyError), db.refused_as_503("x", code="y"):
            {}["a bug is not a 503"]
    finally:
        db.dispose()


def test_concurrent_writers_from_threads_all_commit(db, tmp_path):
    db.upgrade(versions(tmp_path, "a", REV1), "alembic_version_a")
    errors = []

    def work(n):
        try:
            for i in range(10):
                with db.transaction() as conn:
                    conn.execute(sa.text("INSERT INTO a_things (name) VALUES (:n)"), {"n": f"{n}-{i}"})
        except Exception as exc:  # noqa: BLE001 - the main thread asserts there were none
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM a_things")).scalar() == 40


def test_urls():
    assert Database("sqlite:////tmp/x.sqlite3").path.name == "x.sqlite3"
    pg = Database("postgresql://u:secret@127.0.0.1:5/db")
    assert pg.dialect == "postgresql" and pg.path is None
    assert pg.url.startswith("postgresql+psycopg://")  # psycopg 3, the driver adyton installs
    assert "secret" not in pg.display_url and "secret" not in repr(pg)
    with pytest.raises(SettingsError, match="only sqlite"):
        Database("mysql://x/y")
    with pytest.raises(SettingsError, match="not a database URL"):
        Database("::nonsense")


# -- the kernel: kernel.database, register_migrations, adyton db upgrade ----------------------


class TablesPlugin:
    """A third-party plugin keeping a table in the kernel's database."""

    def __init__(self, versions, table="alembic_version_a", database=None):
        self.versions, self.table, self.database = versions, table, database
        self.seen_at_startup = None

    @hookimpl
    def register_migrations(self, register, kernel):
        register(self.versions, self.table, self.database)

    @hookimpl
    def startup(self, kernel):
        with kernel.database.connect() as conn:  # the tables exist before any plugin starts
            self.seen_at_startup = Database.current_revision(conn, self.table)


async def test_tables_are_migrated_before_plugins_start(tmp_path):
    plugin = TablesPlugin(versions(tmp_path, "a", REV1, REV2))
    app = create_app(settings={"home": str(tmp_path / "home"), "models": {"load_at_start": False}},
                     plugins=[plugin], load_entrypoints=False)
    kernel = app.extensions["adyton"]
    assert kernel.database.path == tmp_path / "home" / "adyton.sqlite3"
    async with app.test_app():
        assert plugin.seen_at_startup == "a2"
    assert kernel._database is not None and kernel._database._engine is None  # disposed at shutdown


async def test_a_failing_migration_stops_startup_naming_the_plugin(tmp_path):
    broken = versions(tmp_path, "a", REV1.replace("op.create_table(", "op.drop_table('nope') or op.create_table("))
    app = create_app(settings={"home": str(tmp_path / "home"), "models": {"load_at_start": False}},
                     plugins=[TablesPlugin(broken)], load_entrypoints=False)
    with pytest.raises(Exception, match=r"plugin 'TablesPlugin': migrating its tables \(alembic_version_a\)"):
        async with app.test_app():  # (Quart wraps the startup error in its LifespanError)
            pass


def test_a_version_table_registered_twice_is_refused(tmp_path):
    d = versions(tmp_path, "a", REV1)
    other = type("OtherPlugin", (TablesPlugin,), {})(d)
    app = create_app(settings={"home": str(tmp_path / "home")},
                     plugins=[TablesPlugin(d), other], load_entrypoints=False)
    with pytest.raises(PluginError, match="registered twice"):
        app.extensions["adyton"].migrations()


def test_database_url_setting_and_cli_upgrade(tmp_path, monkeypatch, pg):
    url = pg.create_database()
    monkeypatch.setenv("ADYTON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADYTON_DATABASE__URL", url)
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "limits,guided")
    monkeypatch.delenv("ADYTON_CONFIG", raising=False)
    from adyton.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "limits: alembic_version_limits at l0001" in result.output
    assert "guided: alembic_version_guided at g0001" in result.output
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert {"accounts", "ledger", "guided_policies"} <= set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert not (tmp_path / "home" / "adyton.sqlite3").exists()
