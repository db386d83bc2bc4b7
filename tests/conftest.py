"""Kernel test fixtures: apps with the JSON test wire format and a scripted backend."""

from __future__ import annotations

import pytest

from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend


@pytest.fixture
def make_app(tmp_path):
    """make_app(*backends, plugins=(), settings=None) -> app"""

    def make(*backends, plugins=(), settings=None):
        if not backends:
            backends = (ScriptedBackend(),)
        merged = {"home": str(tmp_path / "home")}
        merged.update(settings or {})
        return create_app(settings=merged, plugins=[JsonTestWirePlugin(), BackendPlugin(*backends), *plugins],
                          load_entrypoints=False)

    return make
