"""adyton's pytest plugin: installing adyton registers it (the ``pytest11``
entry point ``adyton``, as datasette does), so every test directory of the
kernel, of a plugin and of a third party's plugin gets these without
importing anything (``-p no:adyton`` turns it off):

* the marker ``requires_model``: the test runs the real model
  (``$ADYTON_TEST_MODEL``). Before its fixtures are set up, a missing model
  skips it -- or fails it when ``ADYTON_REQUIRE_MODEL`` is set (``make
  test``, CI: there the real-model tests must run). Mark a module with
  ``pytestmark = pytest.mark.requires_model``.
* ``real_model`` (session): the model file's ``Path`` (same skip or failure).
* ``real_models_dir`` (session): a directory holding a link to it, e.g. for
  adyton-llama's ``[llama] models_dir``.
* ``make_app(*backends, plugins=(), settings=None)``: an app with the JSON
  test wire format (``POST /t/generate``), ``backends`` (default one
  ``ScriptedBackend()``) and ``plugins``, its home in the test's tmp_path.
* ``redis_server`` (session): a real ``redis-server`` on a loopback port
  (``RedisServer``: ``.url``, ``.command(...)``).
* ``postgres_server`` (session): a real throw-away PostgreSQL cluster on a
  loopback port (``PostgresServer``: ``.create_database()`` returns the URL
  of a fresh database). Missing PostgreSQL skips, or fails under
  ``ADYTON_REQUIRE_MODEL``, as above.

A conftest.py fixture of the same name overrides any of these for its
directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .model import link_model, require_model, unavailable
from .postgres import PostgresServer, PostgresUnavailable, start_postgres
from .scripted import BackendPlugin, ScriptedBackend
from .servers import RedisServer
from .wire import JsonTestWirePlugin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_model: runs the real model ($ADYTON_TEST_MODEL); skipped when it is missing, "
        "failed when ADYTON_REQUIRE_MODEL is set",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # before any fixture: a module-scoped real-model server must not start without the model
    if item.get_closest_marker("requires_model") is not None:
        require_model()


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The real model's GGUF file (``$ADYTON_TEST_MODEL``); a missing one skips
    the test, or fails it under ``ADYTON_REQUIRE_MODEL``."""
    return require_model()


@pytest.fixture(scope="session")
def real_models_dir(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that holds a link to the real model (and nothing else)."""
    return link_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    """make_app(*backends, plugins=(), settings=None) -> app: the JSON test
    wire, ``backends`` (default: one ``ScriptedBackend()``) and ``plugins``;
    ``settings`` over ``{"home": tmp_path / "home"}``."""
    from ..app import create_app

    def make(*backends: Any, plugins: Any = (), settings: dict[str, Any] | None = None) -> Any:
        merged = {"home": str(tmp_path / "home"), **(settings or {})}
        return create_app(settings=merged,
                          plugins=[JsonTestWirePlugin(), BackendPlugin(*(backends or (ScriptedBackend(),))),
                                   *plugins],
                          load_entrypoints=False)

    return make


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session; a missing one skips the test, or
    fails it under ``ADYTON_REQUIRE_MODEL``."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the session (``adyton.testing.postgres``);
    a missing PostgreSQL skips the test, or fails it under ``ADYTON_REQUIRE_MODEL``."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()
