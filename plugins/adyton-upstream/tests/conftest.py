"""Fixtures of the adyton-upstream tests (helpers: ``upstream_helpers``).

* ``upstreams(*backends, plugins=(), settings=None)``: a real adyton server
  (kernel + adyton-openai + the given backends, default one scripted
  backend) on a loopback port: the remote engine.
* ``front(models, plugins=(), **settings)``: the adyton under test —
  adyton-openai + adyton-upstream (+ ``plugins``) — serving ``models``
  (the ``[upstream] models`` table) on a loopback port.
"""

from __future__ import annotations

from typing import Any

import pytest

import adyton_openai
import adyton_upstream
from adyton import create_app
from adyton.testing import LoopbackServers, ServerThread


@pytest.fixture
def upstreams(tmp_path):
    servers = LoopbackServers(tmp_path / "upstream-home", adyton_openai)
    yield servers
    servers.stop_all()


@pytest.fixture
def front(tmp_path):
    started: list[ServerThread] = []

    def make(models: dict[str, Any], plugins=(), **settings: Any) -> ServerThread:
        upstream = {"models": models, "health_interval_s": 0.5, "backoff_s": 0.5, "connect_timeout_s": 2,
                    **settings}
        app = create_app(settings={"home": str(tmp_path / f"front-{len(started)}"), "upstream": upstream},
                         plugins=[adyton_openai, adyton_upstream, *plugins], load_entrypoints=False)
        server = ServerThread(app).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
