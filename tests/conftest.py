"""Kernel test fixtures: a minimal JSON wire format and a scripted backend."""

from __future__ import annotations

import json

import pytest
from quart import Blueprint, Response, jsonify, request

from adyton import (
    AdytonError,
    ChoiceFinished,
    Credentials,
    GenerationRequest,
    InvalidRequest,
    TextDelta,
    Waiting,
    WireFormat,
    create_app,
    current_kernel,
    hookimpl,
)
from adyton.testing import BackendPlugin, ScriptedBackend


class TestWire(WireFormat):
    """POST /t/generate with a GenerationRequest as JSON; ``stream`` gives
    NDJSON lines. Errors: {"err": {...}} (a shape unlike the kernel's, so
    tests can see which surface rendered an error)."""

    name = "testwire"
    url_prefixes = ("/t/",)

    def __init__(self) -> None:
        bp = Blueprint("testwire", __name__)
        bp.add_url_rule("/t/generate", "generate", self.generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self):
        return self._bp

    def render_error(self, error: AdytonError) -> Response:
        response = jsonify({"err": {"status": error.status, "type": error.type, "code": error.code,
                                    "message": error.message}})
        response.status_code = error.status
        response.headers.update(error.response_headers())
        return response

    async def generate(self):
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        try:
            gen_request = GenerationRequest.model_validate(body)
        except Exception as exc:  # noqa: BLE001
            raise InvalidRequest(str(exc)) from None
        key = request.headers.get("x-key")
        credentials = Credentials(kind="api_key" if key else "none", secret=key or "", wire_format=self.name)
        generation = await current_kernel().pipeline.submit(gen_request, credentials)
        if not gen_request.stream:
            result = await generation.result()
            response = jsonify({
                "model": result.model,
                "choices": [{"text": c.text, "finish_reason": c.finish_reason.value,
                             "logprobs": [lp.logprob for lp in c.logprobs] if c.logprobs else None,
                             "reports": c.reports}
                            for c in result.choices],
                "usage": result.usage.as_dict(),
            })
            response.headers.update(result.headers)
            return response
        await generation.wait_started()

        async def lines():
            async for event in generation.events(keepalive_s=0.2):
                if isinstance(event, TextDelta):
                    yield json.dumps({"index": event.index, "text": event.text}) + "\n"
                elif isinstance(event, ChoiceFinished):
                    yield json.dumps({"index": event.index, "finish": event.finish_reason.value}) + "\n"
                elif isinstance(event, Waiting):
                    yield json.dumps({"ping": True}) + "\n"
            yield json.dumps({"usage": generation.usage.as_dict()}) + "\n"

        return Response(lines(), content_type="application/x-ndjson", headers=generation.headers)


class TestWirePlugin:
    __name__ = "testwire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(TestWire())


@pytest.fixture
def make_app(tmp_path):
    """make_app(backend=None, *extra_plugins, **settings) -> app"""

    def make(*backends, plugins=(), settings=None):
        if not backends:
            backends = (ScriptedBackend(),)
        merged = {"home": str(tmp_path / "home")}
        merged.update(settings or {})
        return create_app(settings=merged, plugins=[TestWirePlugin(), BackendPlugin(*backends), *plugins],
                          load_entrypoints=False)

    return make
