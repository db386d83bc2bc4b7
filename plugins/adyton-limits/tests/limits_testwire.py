"""A minimal wire format for the adyton-limits tests (adapted from the
kernel's tests): POST /t/generate with a GenerationRequest as JSON.

Credentials: ``Authorization: Bearer`` -> "bearer", ``x-api-key`` (or the
kernel tests' ``x-key``) -> "api_key", a ``sessionId`` body field ->
"account_number". ``stream: true`` answers NDJSON lines. Errors:
``{"err": {...}}`` with the error's headers."""

from __future__ import annotations

import json

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
    current_kernel,
    hookimpl,
)


class TestWire(WireFormat):
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

    @staticmethod
    def credentials(body: dict) -> Credentials:
        auth = request.headers.get("Authorization", "")
        session = body.pop("sessionId", None)
        key = request.headers.get("x-api-key") or request.headers.get("x-key")
        if auth.lower().startswith("bearer "):
            return Credentials(kind="bearer", secret=auth[7:], wire_format="testwire")
        if key:
            return Credentials(kind="api_key", secret=key, wire_format="testwire")
        if session is not None:
            return Credentials(kind="account_number", secret=str(session), wire_format="testwire")
        return Credentials(kind="none", wire_format="testwire")

    async def generate(self):
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        credentials = self.credentials(body)
        try:
            gen_request = GenerationRequest.model_validate(body)
        except Exception as exc:  # noqa: BLE001
            raise InvalidRequest(str(exc)) from None
        generation = await current_kernel().pipeline.submit(gen_request, credentials)
        if not gen_request.stream:
            result = await generation.result()
            response = jsonify({
                "model": result.model,
                "choices": [{"text": c.text, "finish_reason": c.finish_reason.value} for c in result.choices],
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
