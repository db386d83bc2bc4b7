"""The kernel's backend conformance suite (``adyton.testing.BackendConformance``)
against the llama backend and the real default model."""

from __future__ import annotations

import pytest

import adyton_llama
from adyton.testing import BackendConformance, ConformanceServer, link_model

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]


class TestLlamaConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls, tmp_path_factory):
        models = link_model(tmp_path_factory.mktemp("models"))
        server = ConformanceServer(tmp_path_factory.mktemp("home"), [adyton_llama],
                                   {"llama": {"models_dir": str(models), "threads": 1}},
                                   "smollm2-135m-instruct")
        yield server
        server.stop()
