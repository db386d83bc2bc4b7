"""The Axiom HTTP surface: ``POST /api/chat`` (and ``GET /api/models``).

Error body, for every error under ``/api/`` (documented in the README)::

    {"error": "<human message>", "code": "<machine code>", "field": "<field or null>"}

plus ``"available": [...]`` (model names) on a 404 for an unknown model.
429 and 503 carry ``Retry-After``; limiter headers (``x-ratelimit-*``) are
passed through on errors and successes alike.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from typing import Any, ClassVar

from quart import Blueprint, Response, request

from adyton import (
    AdytonError,
    GenerationRequest,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
    WireFormat,
    current_kernel,
    json_operation,
    read_json_body,
    require_access,
)

from .parse import WIRE_FORMAT, parse_chat
from .settings import AxiomSettings

#: the kernel's generic codes when no authenticator claims the credentials
_GENERIC_AUTH_CODES = {"invalid_api_key", "missing_api_key"}


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, ensure_ascii=False), status=status,
                        content_type="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


class AxiomWireFormat(WireFormat):
    name = WIRE_FORMAT
    url_prefixes = ("/api/",)
    error_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["error", "code", "field"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                       "field": {"type": ["string", "null"]},
                       "available": {"type": "array", "items": {"type": "string"}}},
    }
    openapi_operations: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "/api/chat": {"post": json_operation(
            "Chat (Local Axiom API)",
            request={
                "type": "object",
                "required": ["model", "sessionId", "messages"],
                "properties": {
                    "model": {"type": "string", "minLength": 1},
                    "sessionId": {"type": "string", "pattern": "^[0-9]{64}$",
                                  "description": "the caller's 64-digit account number"},
                    "system_prompt": {"type": "string"},
                    "messages": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["role", "content"], "additionalProperties": False,
                        "properties": {"role": {"enum": ["user", "assistant"]}, "content": {"type": "string"}},
                    }},
                },
            },
            response={"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
        )},
        "/api/models": {"get": json_operation(
            "Model names", response={"type": "object", "required": ["models"],
                                     "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
        )},
    }

    def __init__(self, kernel: Any = None) -> None:
        self.kernel = kernel
        bp = Blueprint("adyton_axiom", __name__)
        bp.add_url_rule("/api/chat", "chat", self.chat, methods=["POST"])
        bp.add_url_rule("/api/models", "models", self.models, methods=["GET"])
        self._blueprint = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._blueprint

    # -- errors -------------------------------------------------------------------

    def render_error(self, error: AdytonError) -> Response:
        message = error.message
        if isinstance(error, PayloadTooLarge):
            try:
                limit = current_kernel().settings.server.max_body_bytes
                message = (f"request body too large: the limit is {limit} bytes "
                           "(server.max_body_bytes)")
            except Exception:  # noqa: BLE001 - rendered outside an adyton app: the message stays generic
                pass
        body: dict[str, Any] = {"error": message, "code": error.code or error.type,
                                "field": error.param}
        if isinstance(error, ModelNotFound):
            # the error itself must still render, whatever listing the models does
            with contextlib.suppress(Exception):
                body["available"] = current_kernel().model_names()
        return _json_response(body, error.status, error.response_headers())

    # -- routes -------------------------------------------------------------------

    async def chat(self) -> Response:
        kernel = current_kernel()
        # JSON, application/json, not too deep, valid text; over server.max_body_bytes: 413
        body = await read_json_body(require_content_type=True)
        chat = parse_chat(body, client_address=request.remote_addr)
        settings = kernel.section("axiom", AxiomSettings)
        try:
            gen_request = GenerationRequest(
                model=chat.model,
                messages=chat.messages,
                temperature=settings.temperature,
                top_p=settings.top_p,
                # the operator's cap: Axiom clients cannot choose max_tokens, so a
                # long chat lowers the cap to fit instead of failing
                max_tokens=settings.max_tokens,
                fit_context=True,
                # Axiom clients cannot shape the output: the operator's budget and loop stop apply
                time_budget_s=settings.time_budget_s,
                stop_repetition=settings.stop_repetition,
                extra=chat.extra,
            )
        except Exception as exc:  # noqa: BLE001 - pydantic: never a 500 for input
            raise InvalidRequest(f"invalid request: {exc}") from None
        try:
            generation = await kernel.submit(gen_request, chat.credentials)
        except Unauthorized as exc:
            raise self._axiom_unauthorized(exc) from None
        result = await generation.result()
        return _json_response({"message": result.choices[0].text}, headers=result.headers)

    async def models(self) -> Response:
        """The names ``model`` accepts (ids and aliases). Needs the access
        ``[access] models`` names: a GET has no body to carry a sessionId, so
        the credentials come in headers (``Authorization: Bearer <account
        number or API key>``, or ``x-api-key``)."""
        await require_access("models")
        return _json_response({"models": current_kernel().model_names()})

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _axiom_unauthorized(exc: Unauthorized) -> Unauthorized:
        """Name the Axiom field in 401s from the auth step."""
        if exc.code in _GENERIC_AUTH_CODES:
            err = Unauthorized(
                "unknown sessionId: no enabled account has this account number",
                param="sessionId", code="unknown_session_id", headers=exc.headers,
            )
            return err
        if exc.param is None:
            exc.param = "sessionId"
        return exc

    def example_request(self, base_url: str) -> str | None:
        model = "qwen3_4b"  # as Axiom clients send it; map it with [models] aliases
        if self.kernel is not None:
            found = self.kernel.default_model()
            if found is not None:
                model = found[1].id
        payload = {
            "model": model,
            "sessionId": "<your 64-digit account number>",
            "system_prompt": "You are a helpful programming assistant",
            "messages": [{"role": "user", "content": "Write a Python web server"}],
        }
        return (f"curl -X POST {base_url}/api/chat -H 'Content-Type: application/json' "
                f"-d {shlex.quote(json.dumps(payload))}")
