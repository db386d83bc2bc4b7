"""The routes of adyton-steer (errors: ``{"error": {message, type, code, param}}``).

Steering vectors (any caller with an API key; each sees its own and shared ones):

* ``POST /v1/steering_vectors`` — make one: JSON ``{model, positive: [..],
  negative: [..], layers?, pooling?, name?}`` computes it on the server;
  JSON ``{model, gguf: <base64>, name?}`` or a multipart upload (``file``,
  ``model``, ``name``) stores a llama.cpp control vector.
* ``GET /v1/steering_vectors``, ``GET /v1/steering_vectors/<id>``,
  ``GET /v1/steering_vectors/<id>/content`` (the GGUF),
  ``DELETE /v1/steering_vectors/<id>``.
* ``POST /v1/steering_vectors/<id>/share`` ``{shared: bool}`` — admin only.

SAE-monitored generation:

* ``POST /sae/generate`` ``{model, prompt, max_new_tokens, behavior_names,
  params?, steering_vector_id?, steering_strength?}`` — streams SSE.
* ``GET /sae/behaviors``; ``POST /sae/behaviors`` and
  ``DELETE /sae/behaviors/<name>`` — admin only.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError
from quart import Blueprint, Response, jsonify, request

from adyton import (
    DEFAULT_ERROR_SCHEMA,
    AdytonError,
    ChoiceFinished,
    Credentials,
    GenerationRequest,
    HiddenStateObserver,
    InvalidRequest,
    PayloadTooLarge,
    TextDelta,
    WireFormat,
    current_kernel,
    default_error_response,
    invalid_from_validation,
    json_operation,
    read_json_body,
)

from . import settings, stores
from .sae import parse_behavior, summarize
from .store import read_control_vector

_PARAMS = {"temperature", "top_p", "top_k", "seed", "stop", "min_p"}
_SAE_BODY = {"model", "prompt", "max_new_tokens", "max_tokens", "behavior_names", "params",
             "steering_vector_id", "steering_strength"}
_COMPUTE_BODY = {"model", "positive", "negative", "layers", "pooling", "name"}
_UPLOAD_BODY = {"model", "gguf", "name"}


def _credentials() -> Credentials:
    return Credentials.from_headers(request.headers, wire_format="steer", client_address=request.remote_addr)


def _texts(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        raise InvalidRequest(f"'{key}' must be a non-empty list of non-empty strings", param=key)
    return value


def _name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 128):
        raise InvalidRequest("'name' must be a string of at most 128 characters", param="name")
    return value


def _unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unsupported field '{unknown[0]}'", param=unknown[0])


_STRINGS = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
_VECTOR_BODY = {"type": "object", "properties": {
    "model": {"type": "string"}, "name": {"type": "string", "maxLength": 128},
    "positive": _STRINGS, "negative": _STRINGS,
    "layers": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
    "pooling": {"enum": ["last", "mean"]}, "gguf": {"type": "string", "description": "a control-vector GGUF, base64"}}}
_SAE_SCHEMA = {"type": "object", "required": ["prompt", "behavior_names"], "properties": {
    "model": {"type": "string"}, "prompt": {"type": "string", "minLength": 1},
    "max_new_tokens": {"type": "integer", "minimum": 1}, "behavior_names": _STRINGS,
    "params": {"type": "object", "properties": {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0}, "seed": {"type": "integer"}}},
    "steering_vector_id": {"type": "string"}, "steering_strength": {"type": "number"}}}
_BEHAVIOR_SCHEMA = {"type": "object", "required": ["name", "layer"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 128}, "model": {"type": "string"},
    "layer": {"type": "integer", "minimum": 0},
    "sae": {"type": "object", "required": ["path", "feature"],
            "properties": {"path": {"type": "string"}, "feature": {"type": "integer"}}},
    "probe": {"type": "object", "required": ["vector"],
              "properties": {"vector": {"type": "array", "items": {"type": "number"}},
                             "bias": {"type": "number"}, "threshold": {"type": "number"}}}}}


class SteerWire(WireFormat):
    name = "steer"
    url_prefixes = ("/v1/steering_vectors", "/sae/")
    exposed_headers = ("x-request-id",)
    error_schema = DEFAULT_ERROR_SCHEMA
    openapi_operations: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "/v1/steering_vectors": {
            "post": json_operation("Make a steering vector (contrastive prompts, or a control-vector GGUF)",
                                   request=_VECTOR_BODY, status=201),
            "get": json_operation("Your steering vectors and shared ones"),
        },
        "/v1/steering_vectors/{vector_id}": {"get": json_operation("A steering vector"),
                                             "delete": json_operation("Delete your steering vector")},
        "/v1/steering_vectors/{vector_id}/content": {"get": {"summary": "The vector as a control-vector GGUF"}},
        "/v1/steering_vectors/{vector_id}/share": {
            "post": json_operation("Share a vector with every account (admin)",
                                   request={"type": "object", "required": ["shared"],
                                            "properties": {"shared": {"type": "boolean"}}})},
        "/sae/generate": {"post": {**json_operation("SAE-monitored generation", request=_SAE_SCHEMA),
                                   "responses": {"200": {"description": "Server-sent events",
                                                         "content": {"text/event-stream": {}}}}}},
        "/sae/behaviors": {"get": json_operation("The registered behaviors"),
                           "post": json_operation("Register a behavior (admin)", request=_BEHAVIOR_SCHEMA,
                                                  status=201)},
        "/sae/behaviors/{name}": {"delete": json_operation("Remove a behavior (admin)")},
    }

    def __init__(self) -> None:
        bp = Blueprint("adyton_steer", __name__)
        add = bp.add_url_rule
        add("/v1/steering_vectors", "create", self.create, methods=["POST"])
        add("/v1/steering_vectors", "list", self.list_vectors, methods=["GET"])
        add("/v1/steering_vectors/<vector_id>", "show", self.show, methods=["GET"])
        add("/v1/steering_vectors/<vector_id>/content", "content", self.content, methods=["GET"])
        add("/v1/steering_vectors/<vector_id>", "delete", self.delete, methods=["DELETE"])
        add("/v1/steering_vectors/<vector_id>/share", "share", self.share, methods=["POST"])
        add("/sae/behaviors", "behaviors", self.behaviors, methods=["GET"])
        add("/sae/behaviors", "add_behavior", self.add_behavior, methods=["POST"])
        add("/sae/behaviors/<name>", "delete_behavior", self.delete_behavior, methods=["DELETE"])
        add("/sae/generate", "sae_generate", self.sae_generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    def render_error(self, error: AdytonError) -> Response:
        return default_error_response(error)

    # -- helpers ---------------------------------------------------------------------------

    async def _user(self):
        kernel = current_kernel()
        return kernel, await kernel.authenticate(_credentials())

    async def _admin(self):
        kernel = current_kernel()
        return kernel, await kernel.authorize(_credentials(), "admin")

    @staticmethod
    def _model(kernel, name: Any):
        if name is not None and not isinstance(name, str):
            raise InvalidRequest("'model' must be a string", param="model")
        backend, model = kernel.resolve_model(name)
        layers = backend.steering_layers(model)
        shape = backend.hidden_layers(model)
        if layers is None or shape is None:
            raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') cannot be steered",
                                 param="model", code="model_not_supported")
        return model, list(layers), shape

    # -- steering vectors ---------------------------------------------------------------------

    async def create(self) -> Response:
        kernel, principal = await self._user()
        if (request.content_type or "").startswith("multipart/form-data"):
            vector = await self._upload_multipart(kernel, principal)
        else:
            body = await read_json_body()
            if "gguf" in body:
                _unknown(body, _UPLOAD_BODY)
                if not isinstance(body["gguf"], str):
                    raise InvalidRequest("'gguf' must be the file, base64-encoded", param="gguf")
                try:
                    data = base64.b64decode(body["gguf"], validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest("'gguf' is not valid base64", param="gguf") from None
                vector = await self._store_upload(kernel, principal, data, body.get("model"),
                                                  _name(body.get("name")), "gguf")
            else:
                _unknown(body, _COMPUTE_BODY)
                vector = await self._compute(kernel, principal, body)
        response = jsonify(vector.public())
        response.status_code = 201
        return response

    async def _upload_multipart(self, kernel, principal):
        limit = settings(kernel).max_upload_bytes
        if (request.content_length or 0) > limit + 64 * 1024:
            raise PayloadTooLarge(f"a control vector upload may be at most {limit} bytes")
        files = await request.files
        form = await request.form
        upload = files.get("file")
        if upload is None:
            raise InvalidRequest("send the control vector GGUF as the multipart field 'file'", param="file")
        data = upload.read(limit + 1)
        return await self._store_upload(kernel, principal, data, form.get("model"), _name(form.get("name")),
                                        "file")

    async def _store_upload(self, kernel, principal, data: bytes, model_name, name, param: str):
        limit = settings(kernel).max_upload_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"a control vector upload may be at most {limit} bytes")
        model, allowed, (_, hidden) = self._model(kernel, model_name)

        def parse() -> tuple[dict[int, np.ndarray], str | None]:
            with tempfile.NamedTemporaryFile(suffix=".gguf") as tmp:
                tmp.write(data)
                tmp.flush()
                return read_control_vector(Path(tmp.name), param=param)

        vectors, hint = await kernel.offload(parse)
        size = next(iter(vectors.values())).shape[0]
        if size != hidden:
            raise InvalidRequest(f"the control vector is {size}-dimensional; model '{model.id}' has "
                                 f"{hidden}", param=param)
        bad = sorted(set(vectors) - set(allowed))
        if bad:
            raise InvalidRequest(f"direction.{bad[0]}: model '{model.id}' can be steered at layers "
                                 f"{allowed[0]} to {allowed[-1]}", param=param)
        return await kernel.offload(
            stores(kernel).vectors.create, principal, model.id, vectors, model_hint=hint or model.id,
            name=name, method="upload", details={"model_hint": hint})

    async def _compute(self, kernel, principal, body: dict[str, Any]):
        positive, negative = _texts(body, "positive"), _texts(body, "negative")
        most = settings(kernel).max_prompts
        if len(positive) + len(negative) > most:
            raise InvalidRequest(f"at most {most} prompts in all (positive + negative)", param="positive")
        model, allowed, (_n_layers, _) = self._model(kernel, body.get("model"))
        layers = body.get("layers", [allowed[len(allowed) // 2]])
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise InvalidRequest("'layers' must be a non-empty list of layer numbers", param="layers")
        bad = sorted(set(layers) - set(allowed))
        if bad:
            raise InvalidRequest(f"model '{model.id}' can be steered at layers {allowed[0]} to {allowed[-1]}, "
                                 f"not {bad[0]}", param="layers")
        layers = sorted(set(layers))
        pooling = body.get("pooling", "last")
        if pooling not in ("last", "mean"):
            raise InvalidRequest("'pooling' must be 'last' (the last token's state) or 'mean'", param="pooling")
        name = _name(body.get("name"))
        _, states, usage = await kernel.hidden_states(positive + negative, layers, model.id,
                                                     _credentials())
        vectors = contrastive_vectors(states[:len(positive)], states[len(positive):], layers, pooling)
        return await kernel.offload(
            stores(kernel).vectors.create, principal, model.id, vectors, model_hint=model.id, name=name,
            method="contrastive",
            details={"pooling": pooling, "pairs": {"positive": len(positive), "negative": len(negative)},
                     "usage": usage.as_dict()})

    async def list_vectors(self) -> Response:
        kernel, principal = await self._user()
        vectors = await kernel.offload(stores(kernel).vectors.list_vectors, principal)
        return jsonify({"object": "list", "data": [v.public() for v in vectors]})

    async def show(self, vector_id: str) -> Response:
        kernel, principal = await self._user()
        return jsonify((await kernel.offload(stores(kernel).vectors.get, vector_id, principal)).public())

    async def content(self, vector_id: str) -> Response:
        kernel, principal = await self._user()
        store = stores(kernel).vectors
        vector = await kernel.offload(store.get, vector_id, principal)
        data = await kernel.offload(store.gguf_bytes, vector)
        return Response(data, content_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{vector.id}.gguf"'})

    async def delete(self, vector_id: str) -> Response:
        kernel, principal = await self._user()
        await kernel.offload(stores(kernel).vectors.delete, vector_id, principal)
        return jsonify({"id": vector_id, "object": "steering_vector", "deleted": True})

    async def share(self, vector_id: str) -> Response:
        kernel, _ = await self._admin()
        body = await read_json_body()
        _unknown(body, {"shared"})
        if not isinstance(body.get("shared"), bool):
            raise InvalidRequest("'shared' must be true or false", param="shared")
        vector = await kernel.offload(stores(kernel).vectors.set_shared, vector_id, body["shared"])
        return jsonify(vector.public())

    # -- behaviors ------------------------------------------------------------------------------

    async def behaviors(self) -> Response:
        kernel, _ = await self._user()
        # (off the loop: the first use reads behaviors.json, and a put() holds the lock while it writes it)
        listed = await kernel.offload(stores(kernel).behaviors.list_behaviors)
        return jsonify({"object": "list", "data": [b.public() for b in listed]})

    async def add_behavior(self) -> Response:
        kernel, _ = await self._admin()
        body = await read_json_body()
        _unknown(body, {"name", "model", "layer", "sae", "probe"})
        model, _, shape = self._model(kernel, body.get("model"))
        behavior = await kernel.offload(parse_behavior, body, model.id, shape)
        await kernel.offload(stores(kernel).behaviors.put, behavior)
        response = jsonify(behavior.public())
        response.status_code = 201
        return response

    async def delete_behavior(self, name: str) -> Response:
        kernel, _ = await self._admin()
        await kernel.offload(stores(kernel).behaviors.delete, name)
        return jsonify({"name": name, "object": "sae.behavior", "deleted": True})

    # -- /sae/generate ------------------------------------------------------------------------------

    async def sae_generate(self) -> Response:
        kernel, _ = await self._user()  # before anything is said about the behaviors
        body = await read_json_body()
        _unknown(body, _SAE_BODY)
        names = body.get("behavior_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InvalidRequest("'behavior_names' must be a non-empty list of behavior names",
                                 param="behavior_names")
        names = list(dict.fromkeys(names))
        model_name = body.get("model")
        if model_name is not None and not isinstance(model_name, str):
            raise InvalidRequest("'model' must be a string", param="model")
        _, model = kernel.resolve_model(model_name)
        behaviors = await kernel.offload(stores(kernel).behaviors.get_many, names, model.id)
        gen_request = _sae_request(body, model.id)
        observed: collections.deque[tuple[int, int, dict[str, float]]] = collections.deque()

        def observe(index: int, token: int, states: dict[int, np.ndarray]) -> None:  # engine thread
            observed.append((index, token, {b.name: b.activation(states[b.layer]) for b in behaviors}))

        gen_request.observer = HiddenStateObserver(tuple(sorted({b.layer for b in behaviors})), observe)
        backend, _ = kernel.resolve_model(model.id)
        generation = await kernel.submit(gen_request, _credentials())
        await generation.wait_started()
        vocabulary = await kernel.offload(backend.vocabulary, model)  # (built once: not on the loop)
        eos = set(vocabulary.eos_token_ids) if vocabulary is not None else set()

        def token_text(token: int) -> str:
            return vocabulary.token_text(token) if vocabulary is not None and token < vocabulary.size else ""

        async def events() -> AsyncIterator[bytes]:
            text: list[str] = []
            tokens: list[str] = []
            values: dict[str, list[float]] = {n: [] for n in names}
            finish = None

            def drain():
                while observed:
                    index, token, acts = observed.popleft()
                    if token in eos:
                        continue
                    piece = token_text(token)
                    tokens.append(piece)
                    for n, v in acts.items():
                        values[n].append(v)
                    yield _sse({"type": "token", "index": index, "token": piece, "token_id": token,
                                "activations": acts})

            try:
                async for event in generation.events():
                    for line in drain():
                        yield line
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                        yield _sse({"type": "text", "text": event.text})
                    elif isinstance(event, ChoiceFinished):
                        finish = event.finish_reason.value
                    else:
                        yield b": keep-alive\n\n"
                for line in drain():
                    yield line
                summary = {n: summarize(b, values[n], tokens) for n, b in zip(names, behaviors, strict=True)}
                yield _sse({"type": "summary", "id": generation.id, "model": generation.model,
                            "text": "".join(text), "finish_reason": finish, "behaviors": summary,
                            "usage": generation.usage.as_dict()})
                yield b"data: [DONE]\n\n"
            except AdytonError as exc:
                yield _sse({"type": "error", "error": {"message": exc.message, "type": exc.type,
                                                       "code": exc.code, "status": exc.status}})

        headers = {"cache-control": "no-cache", "x-request-id": generation.id, **generation.headers}
        return Response(events(), content_type="text/event-stream", headers=headers)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _sae_request(body: dict[str, Any], model: str) -> GenerationRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("'prompt' (a non-empty string) is required", param="prompt")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("'params' must be an object", param="params")
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise InvalidRequest(f"unsupported field 'params.{unknown[0]}'", param=f"params.{unknown[0]}")
    fields: dict[str, Any] = {"model": model, "prompt": prompt,
                              "max_tokens": body.get("max_new_tokens", body.get("max_tokens", 256)), **params}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    try:
        gen_request = GenerationRequest.model_validate(fields, strict=True)
    except ValidationError as exc:
        raise invalid_from_validation(exc, rename={"max_tokens": "max_new_tokens"}) from None
    for key in ("steering_vector_id", "steering_strength"):
        if key in body:
            gen_request.extra[key] = body[key]
    return gen_request


def contrastive_vectors(positive: list[dict[int, np.ndarray]], negative: list[dict[int, np.ndarray]],
                        layers: list[int], pooling: str) -> dict[int, np.ndarray]:
    """The mean difference of hidden states (contrastive activation addition):
    per layer, mean over the positive prompts of each prompt's pooled state
    (its last token's, or the mean over its tokens) minus the same over the
    negative prompts."""

    def pooled(states: dict[int, np.ndarray], layer: int) -> np.ndarray:
        rows = states[layer].astype(np.float64)
        return rows[-1] if pooling == "last" else rows.mean(axis=0)

    out = {}
    for layer in layers:
        pos = np.mean([pooled(s, layer) for s in positive], axis=0)
        neg = np.mean([pooled(s, layer) for s in negative], axis=0)
        out[layer] = (pos - neg).astype(np.float32)
    return out
