"""The kernel's backend conformance suite (``adyton.testing.BackendConformance``)
against the llamacpp backend and the real default model."""

from __future__ import annotations

import pytest
from llamacpp_helpers import SMOL

import adyton_llamacpp
from adyton.testing import BackendConformance, ConformanceServer, require_model

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]


class TestLlamaCppConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls, tmp_path_factory):
        models = tmp_path_factory.mktemp("models")
        model = require_model()
        (models / model.name).symlink_to(model.resolve())
        server = ConformanceServer(tmp_path_factory.mktemp("home"), [adyton_llamacpp],
                                   {"llamacpp": {"models_dir": str(models), "slots": 2, "threads": 1}}, SMOL)
        yield server
        server.stop()
