"""Fixtures for the adyton-limits tests: apps with the plugin and a test
wire format, a fake clock, a real Redis server on a free loopback port, and a
real PostgreSQL server (``db_url``: tests parametrized with
``@pytest.mark.parametrize("db_url", DATABASES, indirect=True)`` run on the
default SQLite database and on a fresh PostgreSQL database)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from limits_helpers import FakeClock

from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend, free_port
from adyton.testing_postgres import PostgresUnavailable, start_postgres
from adyton_limits import LimitsPlugin


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (adyton.testing_postgres)."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("ADYTON_REQUIRE_MODEL"):  # make test: everything must run
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def db_url(request):
    """None (the default database: the kernel's SQLite) or, for the param
    "postgresql", the URL of a fresh PostgreSQL database."""
    if getattr(request, "param", "default") == "postgresql":
        return request.getfixturevalue("postgres").create_database()
    return None


@pytest.fixture
def make_app(home, clock, db_url):
    """make_app(*backends, tiers=None, settings=None, clock=...) -> app
    (on ``db_url``'s database when a test is parametrized with it)"""

    def make(*backends, tiers=None, limits=None, settings=None, use_clock=True):
        if not backends:
            backends = (ScriptedBackend(),)
        lim = {"upgrade": {"enabled": False}}
        if db_url is not None:
            lim["db_url"] = db_url
        if tiers is not None:
            lim["tiers"] = tiers
        lim.update(limits or {})
        merged = {"home": str(home), "queue": {"max_waiting": 200}, "limits": lim}
        merged.update(settings or {})
        plugin = LimitsPlugin(clock=clock if use_clock else None)
        return create_app(settings=merged, plugins=[JsonTestWirePlugin(), BackendPlugin(*backends), plugin],
                          load_entrypoints=False)

    return make


@pytest.fixture(scope="session")
def redis_server():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make redis, or apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def redis_limits(redis_server):
    """limits settings for Redis with a per-test key prefix."""
    return {"storage_uri": redis_server, "key_prefix": "t" + uuid.uuid4().hex[:10]}
