"""Axionic's guided-generation surface.

* ``POST /v1/policies`` (body: a policy, or ``{"policy": {...}}``) -> the
  saved policy with its ``policy_id``; ``GET /v1/policies``,
  ``GET /v1/policies/<id>``, ``DELETE /v1/policies/<id>``.
* ``POST /sampling/generate``: ``prompt`` (or ``messages``), ``method:
  "guided-generation"``, ``max_new_tokens``, ``params`` (temperature, top_p,
  top_k, seed, stop), and one of ``json_schema`` / ``regex_pattern`` /
  ``grammar`` (adyton also takes ``choices``, ``json_mode``, ``policy`` or
  ``policy_id``). Answers with the text and whether the verifiers accepted
  it.

Errors: ``{"detail": message, "error": {"message", "type", "code", "param"}}``.
Credentials: ``x-api-key`` or ``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from quart import Blueprint, Response, jsonify, request

from adyton import (
    DEFAULT_ERROR_SCHEMA,
    AdytonError,
    Credentials,
    GenerationRequest,
    InvalidRequest,
    UnsupportedConstraint,
    WireFormat,
    current_kernel,
    invalid_from_validation,
    json_operation,
    read_json_body,
)

from .policy import GUIDED, parse_policy, policy_constraint, public

_PARAMS = {"temperature", "top_p", "top_k", "seed", "stop", "min_p"}
_BODY = {"prompt", "messages", "model", "method", "max_new_tokens", "max_tokens", "params",
         "json_schema", "regex_pattern", "grammar", "grammar_syntax", "choices", "json_mode",
         "verifiers", "repair_on_failure", "policy", "policy_id",
         "steering_vector_id", "steering_strength"}


_CONSTRAINTS = {
    "json_schema": {"type": "object"},
    "regex_pattern": {"type": "string"},
    "grammar": {"type": "string"},
    "grammar_syntax": {"enum": ["lark", "gbnf"]},
    "choices": {"type": "array", "items": {"type": "string"}},
    "json_mode": {"type": "boolean"},
}
#: the documented body of POST /sampling/generate (for /openapi.json)
_GENERATE_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                                                "properties": {"role": {"type": "string"},
                                                               "content": {"type": "string"}}}},
        "model": {"type": "string"},
        "method": {"const": GUIDED},
        "max_new_tokens": {"type": "integer", "minimum": 1},
        "params": {"type": "object", "properties": {
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0}, "seed": {"type": "integer"},
            "stop": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
        **_CONSTRAINTS,
        "verifiers": {"type": "object"},
        "repair_on_failure": {"type": "boolean"},
        "policy": {"type": "object"},
        "policy_id": {"type": "string"},
    },
}
#: the documented body of POST /v1/policies
_POLICY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                   "sampling": {"type": "object", "properties": {"method": {"const": GUIDED}}},
                   "constraints": {"type": "object", "properties": _CONSTRAINTS},
                   "verifiers": {"type": "object"}},
}


def credentials_from_headers(wire: str) -> Credentials:
    return Credentials.from_headers(request.headers, wire_format=wire, client_address=request.remote_addr)


class AxionicGuided(WireFormat):
    name = "guided"
    url_prefixes = ("/v1/policies", "/sampling/")
    #: added by this plugin's logits processors, on whichever surface served the request
    exposed_headers = ("x-adyton-guided",)
    error_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["detail", "error"],
        "properties": {"detail": {"type": "string"}, "error": DEFAULT_ERROR_SCHEMA["properties"]["error"]},
    }
    openapi_operations: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "/sampling/generate": {"post": json_operation("Guided generation", request=_GENERATE_SCHEMA)},
        "/v1/policies": {
            "post": json_operation("Save a policy", request=_POLICY_SCHEMA, status=201),
            "get": json_operation("List your policies"),
        },
        "/v1/policies/{policy_id}": {"get": json_operation("A saved policy"),
                                     "delete": json_operation("Delete a saved policy")},
    }

    def __init__(self) -> None:
        bp = Blueprint("adyton_guided", __name__)
        bp.add_url_rule("/v1/policies", "create_policy", self.create_policy, methods=["POST"])
        bp.add_url_rule("/v1/policies", "list_policies", self.list_policies, methods=["GET"])
        bp.add_url_rule("/v1/policies/<policy_id>", "get_policy", self.get_policy, methods=["GET"])
        bp.add_url_rule("/v1/policies/<policy_id>", "delete_policy", self.delete_policy, methods=["DELETE"])
        bp.add_url_rule("/sampling/generate", "generate", self.generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    def render_error(self, error: AdytonError) -> Response:
        body: dict[str, Any] = {"message": error.message, "type": error.type, "code": error.code}
        if error.param is not None:
            body["param"] = error.param
        response = jsonify({"detail": error.message, "error": body})
        response.status_code = error.status
        response.headers.update(error.response_headers())
        return response

    def example_request(self, base_url: str) -> str | None:
        return (
            f"curl -s {base_url}/sampling/generate -H 'content-type: application/json' "
            "-H 'x-api-key: YOUR_API_KEY' -d "
            "'{\"prompt\": \"Give a JSON object with a name.\", \"method\": \"guided-generation\", "
            "\"max_new_tokens\": 60, \"json_schema\": {\"type\": \"object\", \"properties\": "
            "{\"name\": {\"type\": \"string\"}}, \"required\": [\"name\"]}}'"
        )

    # -- policies ------------------------------------------------------------------

    async def _principal(self):
        kernel = current_kernel()
        return kernel, await kernel.authenticate(credentials_from_headers(self.name))

    async def create_policy(self) -> Response:
        from . import compiler, policy_store

        kernel, principal = await self._principal()
        body = await read_json_body()
        raw = body["policy"] if isinstance(body.get("policy"), dict) else body
        if raw is not body:
            extra = set(body) - {"policy", "name", "description"}
            if extra:
                raise InvalidRequest(f"unsupported field '{sorted(extra)[0]}'", param=sorted(extra)[0])
            raw = {**raw, **{k: body[k] for k in ("name", "description") if k in body}}
        policy = parse_policy(raw)
        constraint = policy_constraint(policy, "policy")
        if constraint is not None:
            # refuse what could never be enforced, now (a compile can take a while: off the loop)
            await kernel.offload(compiler.grammar, constraint)
        record = await kernel.offload(policy_store(kernel).create, policy, principal)
        response = jsonify(public(record))
        response.status_code = 201
        return response

    async def list_policies(self) -> Response:
        from . import policy_store

        kernel, principal = await self._principal()
        records = await kernel.offload(policy_store(kernel).list_policies, principal)
        return jsonify({"object": "list", "data": [public(r) for r in records]})

    async def get_policy(self, policy_id: str) -> Response:
        from . import policy_store

        kernel, principal = await self._principal()
        return jsonify(public(await kernel.offload(policy_store(kernel).get, policy_id, principal)))

    async def delete_policy(self, policy_id: str) -> Response:
        from . import policy_store

        kernel, principal = await self._principal()
        await kernel.offload(policy_store(kernel).delete, policy_id, principal)
        return jsonify({"id": policy_id, "policy_id": policy_id, "object": "policy", "deleted": True})

    # -- /sampling/generate -------------------------------------------------------------

    async def generate(self) -> Response:
        kernel = current_kernel()
        body = await read_json_body()
        unknown = set(body) - _BODY
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(f"unsupported field '{name}'", param=name)
        gen_request = self._request(body)
        generation = await kernel.submit(gen_request, credentials_from_headers(self.name))
        result = await generation.result()
        choice = result.choices[0]
        report = choice.reports.get("guided")
        out = {
            "id": result.id,
            "object": "sampling.generation",
            "created": result.created,
            "model": result.model,
            "method": GUIDED,
            "output": choice.text,
            "text": choice.text,
            "accepted": bool(report and report.get("accepted")),
            "finish_reason": choice.finish_reason.value,
            "verification": report,
            "usage": result.usage.as_dict(),
        }
        response = jsonify(out)
        response.headers.update(result.headers)
        return response

    def _request(self, body: dict[str, Any]) -> GenerationRequest:
        method = body.get("method", GUIDED)
        if method != GUIDED:
            raise InvalidRequest(
                f"unsupported method {method!r}; this server supports '{GUIDED}'", param="method")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidRequest("'params' must be an object", param="params")
        unknown = set(params) - _PARAMS
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(f"unsupported field 'params.{name}'", param=f"params.{name}")
        inline = {k: body[k] for k in ("json_schema", "regex_pattern", "grammar", "grammar_syntax",
                                        "choices", "json_mode") if k in body}
        uses_policy = "policy" in body or "policy_id" in body
        if inline and uses_policy:
            raise InvalidRequest("send constraints inline or through 'policy'/'policy_id', not both",
                                 param="policy")
        max_new = body.get("max_new_tokens", body.get("max_tokens", 256))
        fields: dict[str, Any] = {
            "model": body.get("model"),
            "max_tokens": max_new,
        }
        if "prompt" in body and "messages" in body:
            raise InvalidRequest("send 'prompt' or 'messages', not both", param="prompt")
        if "messages" in body:
            fields["messages"] = body["messages"]
        elif isinstance(body.get("prompt"), str):
            fields["prompt"] = body["prompt"]
        else:
            raise InvalidRequest("'prompt' (a string) is required", param="prompt")
        for key in ("temperature", "top_p", "top_k", "seed", "stop", "min_p"):
            if key in params:
                fields[key] = params[key]
        if isinstance(fields.get("stop"), str):
            fields["stop"] = [fields["stop"]]
        try:
            # strict, like the OpenAI route: "5" is not a number of tokens
            gen_request = GenerationRequest.model_validate(fields, strict=True)
        except ValidationError as exc:
            raise invalid_from_validation(exc, rename={"max_tokens": "max_new_tokens"}) from None
        for key in ("steering_vector_id", "steering_strength"):  # for adyton-steer (else a 400)
            if key in body:
                gen_request.extra[key] = body[key]
        if uses_policy:
            for key in ("policy", "policy_id"):
                if key in body:
                    gen_request.extra[key] = body[key]
            return gen_request
        verifiers = body.get("verifiers") or {}
        if "repair_on_failure" in body:
            if not isinstance(verifiers, dict):
                raise InvalidRequest("'verifiers' must be an object", param="verifiers")
            verifiers = {**verifiers, "repair_on_failure": body["repair_on_failure"]}
        policy = parse_policy(
            {"sampling": {"method": GUIDED}, "constraints": inline, "verifiers": verifiers},
            param="body",
        )
        constraint = policy_constraint(policy, "sampling/generate")
        if constraint is None:  # pragma: no cover - guided-generation demands one
            raise UnsupportedConstraint("no constraint given")
        gen_request.constraints.append(constraint)
        return gen_request
