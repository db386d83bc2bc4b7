"""POST /v1/embeddings over ``kernel.embed``.

Inputs: a text, a list of texts, a token array or a list of token arrays.
``encoding_format`` "float" (numbers) or "base64" (little-endian float32
bytes, what the official SDKs ask for by default). ``dimensions`` other than
the model's own size is a 400: vectors are never shortened silently. A model
whose backend cannot embed is a 400 naming it. Usage: the input tokens, as
``prompt_tokens`` and ``total_tokens``, counted against the account's limits.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError
from quart import Response, jsonify

from adyton import EmbeddingRequest, EmbeddingResult, InvalidRequest, current_kernel

from .schemas import EmbeddingsRequest
from .settings import OpenAISettings


class EmbeddingOut(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsageOut(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingListOut(BaseModel):
    """One embedding per input, in input order."""

    object: Literal["list"]
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsageOut


#: the most inputs one request may carry (as OpenAI)
MAX_INPUTS = 2048


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for 'input': {message}", param="input", code="invalid_value")


def kernel_request(body: EmbeddingsRequest) -> EmbeddingRequest:
    value = body.input
    if isinstance(value, str):
        inputs: list[Any] = [value]
    elif value and isinstance(value[0], int):
        inputs = [value]  # one token array
    else:
        inputs = list(value)
    if not inputs:
        raise _invalid("send at least one input.")
    if len(inputs) > MAX_INPUTS:
        raise _invalid(f"at most {MAX_INPUTS} inputs per request (got {len(inputs)}).")
    for i, item in enumerate(inputs):
        where = "" if len(inputs) == 1 else f"input {i}: "
        if len(item) == 0:
            raise _invalid(f"{where}an input must not be empty.")
        if not isinstance(item, str) and min(item) < 0:
            raise _invalid(f"{where}token ids are non-negative integers.")
    try:
        return EmbeddingRequest(inputs=inputs, model=body.model or None, dimensions=body.dimensions,
                                user=body.user)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise InvalidRequest(f"Invalid request: {err['msg']}", param="input", code="invalid_value") from None


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def body_of(result: EmbeddingResult, model_name: str, encoding: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                 for i, v in enumerate(result.vectors)],
        "model": model_name,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


async def create(wire: Any) -> Response:
    """The route: ``wire`` is the ``OpenAIWire`` (its body reader, credentials
    and model naming)."""
    from .wire import credentials_from_request

    kernel = current_kernel()
    settings = kernel.section("openai", OpenAISettings)
    body, _ = await wire._body(EmbeddingsRequest, kernel, settings)
    request = kernel_request(body)
    result = await kernel.embed(request, credentials_from_request(wire.name, kernel))
    response = jsonify(body_of(result, wire._model_name(result.model, kernel, settings),
                               body.encoding_format or "float"))
    response.headers.update(result.headers)
    response.headers["x-request-id"] = result.id
    return response


def routes(wire: Any) -> list[tuple[str, str, Any, type | None, type, list[str]]]:
    """(rule, endpoint, view, documented body, documented response, methods)
    for the wire format's blueprint."""

    async def create_embeddings() -> Response:
        """Create embeddings

        One vector per input (a text, texts, or token arrays), from a model
        whose backend can embed; `encoding_format` float or base64."""
        return await create(wire)

    return [("/v1/embeddings", "embeddings", create_embeddings, EmbeddingsRequest, EmbeddingListOut, ["POST"])]


__all__ = ["EmbeddingListOut", "body_of", "create", "kernel_request", "routes"]
