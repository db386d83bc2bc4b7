"""Fixtures: an adyton app with the Axiom wire format and scripted backends,
served by hypercorn on a real loopback socket."""

from __future__ import annotations

from typing import Iterator

import pytest

import adyton_axiom
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend, ServerThread


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """serve(*backends, plugins=(), settings=None) -> ServerThread (started)."""
    servers: list[ServerThread] = []

    def start(*backends, plugins=(), settings=None) -> ServerThread:
        if not backends:
            backends = (ScriptedBackend(),)
        merged = {"home": str(tmp_path / "home")}
        for key, value in (settings or {}).items():
            merged[key] = value
        app = create_app(settings=merged, plugins=[adyton_axiom, BackendPlugin(*backends), *plugins],
                         load_entrypoints=False)
        server = ServerThread(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
