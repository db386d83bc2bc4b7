"""Fixtures for the adyton-limits tests: apps with the plugin and a test
wire format, a fake clock, Redis settings (the server is adyton.testing's
``redis_server`` fixture), and a real PostgreSQL server (adyton.testing's
``postgres_server`` fixture; ``db_url``: tests parametrized with
``@pytest.mark.parametrize("db_url", DATABASES, indirect=True)`` run on the
default SQLite database and on a fresh PostgreSQL database)."""

from __future__ import annotations

import uuid

import pytest
from limits_helpers import FakeClock

from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend
from adyton_limits import LimitsPlugin


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def db_url(request):
    """None (the default database: the kernel's SQLite) or, for the param
    "postgresql", the URL of a fresh PostgreSQL database."""
    if getattr(request, "param", "default") == "postgresql":
        return request.getfixturevalue("postgres_server").create_database()
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


@pytest.fixture
def redis_limits(redis_server):
    """limits settings for Redis (adyton.testing's redis_server fixture) with a per-test key prefix."""
    return {"storage_uri": redis_server.url, "key_prefix": "t" + uuid.uuid4().hex[:10]}
