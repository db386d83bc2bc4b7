"""adyton.testing.postgres: a real throw-away PostgreSQL cluster on loopback."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from adyton.testing.postgres import PostgresUnavailable, start_postgres


def test_start_create_database_and_stop():
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("ADYTON_REQUIRE_MODEL"):
            raise
        pytest.skip(str(exc))
    try:
        assert server.host == "127.0.0.1"
        url_a, url_b = server.create_database(), server.create_database()
        assert url_a != url_b and url_a.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        engine = sa.create_engine(url_a)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (41), (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT sum(x) FROM t")).scalar() == 42
        engine.dispose()
        # databases are separate: the other one has no table t
        other = sa.create_engine(url_b)
        with other.connect() as conn:
            assert not sa.inspect(conn).has_table("t")
        other.dispose()
    finally:
        server.stop()
    assert not server.data_dir.exists()
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(server.url, connect_args={"connect_timeout": 2}).connect()
    server.stop()  # idempotent
