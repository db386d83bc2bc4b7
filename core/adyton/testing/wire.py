"""``JsonTestWire``: a minimal wire format for testing plugins that are not
wire formats (``POST /t/generate`` takes a ``GenerationRequest`` as JSON);
``JsonTestWirePlugin`` registers it."""

from __future__ import annotations

import json

from pydantic import ValidationError
from quart import Blueprint, Response, jsonify, request

from ..body import read_json_body
from ..errors import AdytonError, InvalidRequest
from ..hookspecs import WireFormat, hookimpl
from ..kernel import current_kernel
from ..types import ChoiceFinished, Credentials, GenerationRequest, TextDelta, Waiting


class JsonTestWire(WireFormat):
    """POST /t/generate with a GenerationRequest as JSON; ``stream`` gives
    NDJSON lines. Errors: {"err": {...}} (a shape unlike the kernel's, so
    tests can see which surface rendered an error).

    Credentials, as the real wire formats find them (see ``credentials``):
    ``Credentials.from_headers`` (``x-api-key`` gives kind "api_key", else
    ``Authorization: Bearer <secret>`` gives "bearer"); else an ``x-key``
    header gives "api_key"; else a ``sessionId`` field in the body (taken out
    before the body is validated) gives "account_number"; else "none".
    """

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

    def credentials(self, body: dict) -> Credentials:
        """The caller's credentials from the current request's headers and
        ``body`` (whose ``sessionId``, if any, is removed)."""
        session = body.pop("sessionId", None)
        found = Credentials.from_headers(request.headers, wire_format=self.name)
        if found.kind != "none":
            return found
        key = request.headers.get("x-key")
        if key:
            return Credentials(kind="api_key", secret=key, wire_format=self.name)
        if session is not None:
            return Credentials(kind="account_number", secret=str(session), wire_format=self.name)
        return found

    async def generate(self):
        body = await read_json_body()
        credentials = self.credentials(body)
        try:
            gen_request = GenerationRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(str(exc)) from None
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


class JsonTestWirePlugin:
    """Registers a ``JsonTestWire``: ``create_app(plugins=[JsonTestWirePlugin(), ...])``."""

    __name__ = "testwire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(JsonTestWire())
