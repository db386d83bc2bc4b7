"""Embeddings and hidden states: the same admission, limits and engine
queue as a generation, without the sampler — authenticate, resolve the
model, check the backend can (``Backend.embedding_dimensions`` /
``hidden_layers``), tokenize, reserve the input tokens, run on the engine
queue (``_EmbeddingRun``) and settle exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from .access import authenticate
from .admission import prepare
from .errors import AdytonError, BackendError, ContextTooLong, InvalidRequest, ServerBusy, ServiceUnavailable
from .hookspecs import Backend
from .limits import reserve, settle
from .queue import EngineJob
from .types import (
    Credentials,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ModelInfo,
    RequestCost,
    Reservation,
    Usage,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel

log = logging.getLogger("adyton.pipeline")

#: what an embedding run gives per input (a vector, or hidden states by layer)
R = TypeVar("R")


async def embed(kernel: Kernel, request: EmbeddingRequest, credentials: Credentials) -> EmbeddingResult:
    """Embeddings through the same admission, limits and engine queue as a
    generation: authenticate, resolve the model, check that its backend
    embeds (``Backend.embedding_dimensions``; 400 naming the model if
    not), tokenize (``prepare_embeddings``; each input must fit the
    context), reserve the input tokens (no completion), run
    ``Backend.embed`` on the engine queue and settle exactly once, with
    the input tokens once the engine ran (cancelled too) and nothing if it
    never did. A client that goes away leaves the queue or stops the
    engine between inputs. Raises ``AdytonError``."""
    wire = credentials.wire_format
    try:
        principal = await authenticate(kernel, credentials)
        backend, model = kernel.models.resolve(request.model)
        dimensions = backend.embedding_dimensions(model)
        if dimensions is None:
            raise InvalidRequest(
                f"model '{model.id}' (backend '{backend.name}') does not produce embeddings",
                param="model", code="model_not_supported",
            )
        if request.dimensions is not None and request.dimensions != dimensions:
            raise InvalidRequest(
                f"model '{model.id}' returns {dimensions}-dimensional embeddings and cannot "
                f"shorten them: 'dimensions' must be {dimensions} or left out",
                param="dimensions", code="unsupported_parameter",
            )
        # off the loop: a backend may read its tokenizer the first time
        token_ids = await kernel.offload(backend.prepare_embeddings, request.inputs, model)
        context = model.context_length
        for i, ids in enumerate(token_ids):
            if not ids:
                raise InvalidRequest(f"input {i} has no tokens", param="input", code="invalid_value")
            if context and len(ids) > context:
                raise ContextTooLong(
                    f"input {i} is {len(ids)} tokens; the context of model '{model.id}' is "
                    f"{context} tokens", param="input",
                )
        queue = kernel.queue_for(backend)
        queue.check_admission()
    except AdytonError as exc:
        kernel.metrics.rejected(exc, wire)
        raise
    run = _EmbeddingRun(kernel, backend, model, token_ids, wire,
                        work=lambda cancelled: backend.embed(model, token_ids, cancelled))
    run.reservations = await reserve(kernel,
        principal, RequestCost(model=model.id, prompt_tokens=run.n_tokens, max_completion_tokens=0,
                               wire_format=wire), wire)
    vectors = await run.run()
    for i, vector in enumerate(vectors):
        if getattr(vector, "shape", None) != (dimensions,):
            raise BackendError(f"backend '{backend.name}' returned a vector of shape "
                               f"{getattr(vector, 'shape', None)} for input {i}, not ({dimensions},)")
    headers: dict[str, str] = {}
    for reservation in run.reservations:
        headers.update(reservation.headers)
    return EmbeddingResult(id=uuid.uuid4().hex, model=model.id, created=int(time.time()),
                           vectors=vectors, dimensions=dimensions, usage=run.usage, headers=headers)


async def hidden_states(kernel: Kernel, inputs: list[str], layers: Sequence[int], model_name: str | None,
                        credentials: Credentials) -> tuple[Any, list[dict[int, np.ndarray]], Usage]:
    """The hidden states of ``inputs`` (texts, tokenized by the model's
    backend as raw prompts) at ``layers``, through the same admission,
    limits and engine queue as ``embed``: the input tokens are the usage.
    Returns (the ModelInfo, one ``{layer: array[n_tokens, hidden]}`` per
    input, the usage). 400 naming the model if its backend cannot read
    hidden states or the layers do not exist."""
    wire = credentials.wire_format
    try:
        principal = await authenticate(kernel, credentials)
        backend, model = kernel.models.resolve(model_name)
        shape = backend.hidden_layers(model)
        if shape is None:
            raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') does not expose "
                                 f"hidden states", param="model", code="model_not_supported")
        bad = sorted(layer for layer in layers if not 0 <= layer < shape[0])
        if bad:
            raise InvalidRequest(f"model '{model.id}' has {shape[0]} layers (0 to {shape[0] - 1}); "
                                 f"layer(s) {', '.join(map(str, bad))} do not exist",
                                 param="layers", code="invalid_value")
        token_ids = []
        for text in inputs:
            prepared = await prepare(kernel, backend, GenerationRequest(prompt=text, model=model.id), model)
            if prepared.n_tokens > prepared.context_length:
                raise ContextTooLong(f"an input is {prepared.n_tokens} tokens; the context of model "
                                     f"'{model.id}' is {prepared.context_length} tokens")
            token_ids.append(prepared.token_ids)
        queue = kernel.queue_for(backend)
        queue.check_admission()
    except AdytonError as exc:
        kernel.metrics.rejected(exc, wire)
        raise
    wanted = tuple(layers)
    run = _EmbeddingRun(kernel, backend, model, token_ids, wire,
                        work=lambda cancelled: backend.hidden_states(model, token_ids, wanted, cancelled))
    run.reservations = await reserve(kernel,
        principal, RequestCost(model=model.id, prompt_tokens=run.n_tokens, max_completion_tokens=0,
                               wire_format=wire), wire)
    states = await run.run()
    return model, states, run.usage


class _EmbeddingRun(Generic[R]):
    """One admitted embedding request on the engine queue: ``work(cancelled)``
    runs on the engine thread and gives one result per input
    (``Backend.embed`` for ``Pipeline.embed``, ``Backend.hidden_states`` for
    ``hidden_states``)."""

    def __init__(self, kernel: Kernel, backend: Backend, model: ModelInfo,
                 token_ids: list[list[int]], wire_format: str,
                 work: Callable[[threading.Event], list[R]]) -> None:
        self.work = work
        self.kernel = kernel
        self.backend = backend
        self.model = model
        self.token_ids = token_ids
        self.n_tokens = sum(len(ids) for ids in token_ids)
        self.wire_format = wire_format
        self.reservations: list[Reservation] = []
        self.usage = Usage()
        self.cancelled = threading.Event()

    def _work(self) -> list[R]:
        """Engine thread."""
        self.kernel.models.load_blocking(self.backend, self.model.id)
        return self.work(self.cancelled)

    async def run(self) -> list[R]:
        kernel = self.kernel
        queue = kernel.queue_for(self.backend)
        job = EngineJob(self._work)
        outcome = "error"
        try:
            try:
                queue.submit(job)
                vectors = await job.wait_done()
            except (ServerBusy, ServiceUnavailable) as exc:
                if not job.started:
                    kernel.metrics.rejected(exc, self.wire_format)
                    outcome = "rejected"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                if queue.abandon(job) is None:  # running: stop between inputs, wait for the engine
                    self.cancelled.set()
                    with contextlib.suppress(BaseException):
                        await job.wait_done()
                raise
            except AdytonError:
                raise
            except Exception as exc:  # never a bare 500 from a backend bug
                log.error("embedding on backend %s failed", self.backend.name, exc_info=exc)
                raise BackendError(f"the backend failed: {type(exc).__name__}: {exc}") from exc
            if self.cancelled.is_set() or len(vectors) != len(self.token_ids):
                raise BackendError(f"backend '{self.backend.name}' returned {len(vectors)} vectors "
                                   f"for {len(self.token_ids)} inputs")
            outcome = "ok"
            return vectors
        finally:
            if job.started:  # the engine read the inputs (also when it failed or was stopped)
                self.usage = Usage(prompt_tokens=self.n_tokens)
            kernel.metrics.finished(self, outcome)
            await asyncio.shield(settle(self.reservations, self.usage, outcome))
