"""Fixtures of the adyton-guided tests (helpers: ``guided_helpers``): apps
with adyton-guided, a scripted backend, the test wire format and a counting
limiter."""

from __future__ import annotations

import pytest
from guided_helpers import JSON_VOCAB, CountingLimiter, GWirePlugin, LimiterPlugin

import adyton_guided
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend


@pytest.fixture
def limiter():
    return CountingLimiter()


@pytest.fixture
def make_app(tmp_path, limiter):
    """make_app(*backends, plugins=(), settings=None) -> app with adyton_guided,
    the test wire and a counting limiter."""

    def make(*backends, plugins=(), settings=None):
        if not backends:
            backends = (ScriptedBackend(extra_vocab=JSON_VOCAB),)
        merged = {"home": str(tmp_path / "home")}
        merged.update(settings or {})
        return create_app(
            settings=merged,
            plugins=[adyton_guided, GWirePlugin(), BackendPlugin(*backends), LimiterPlugin(limiter), *plugins],
            load_entrypoints=False,
        )

    return make
