"""The module-scoped real-model server (see ``steer_helpers``)."""

from __future__ import annotations

import pytest
from steer_helpers import start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("home"))
    yield server
    server.stop()
