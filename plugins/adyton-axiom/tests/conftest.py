"""Fixtures: an adyton app with the Axiom wire format and scripted backends,
served by hypercorn on a real loopback socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import adyton_axiom
from adyton.testing import LoopbackServers


@pytest.fixture
def serve(tmp_path) -> Iterator[LoopbackServers]:
    """serve(*backends, plugins=(), settings=None) -> ServerThread (started)."""
    servers = LoopbackServers(tmp_path / "home", adyton_axiom)
    yield servers
    servers.stop_all()
