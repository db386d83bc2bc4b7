"""The one request path.

A wire format calls ``await kernel.submit(request, credentials)`` (docs/kernel.md),
which is ``Pipeline.submit``. It runs admission on the event loop — authenticate (``access.py``),
the ``prepare_request`` hooks, resolve the model (``models.py``), prepare
(tokenize) and check the context (``admission.py``), build the sampler chain
(refusing unenforceable constraints; ``chain.py``), check the queue
(``queue.py``), reserve limits (``limits.py``) — and raises an
``AdytonError`` if any step refuses. Otherwise it returns a running
``Generation`` (``generation.py``): iterate it for events (streaming) or
``await generation.result()``. Leaving early (``aclose()``, or the handler
task being cancelled because the client went away) removes the request from
the queue or stops its generation within one token step. The limits
reservation is settled exactly once, with the tokens actually produced.

Embeddings and hidden states take the same stages without the sampler
(``embeddings.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import embeddings, limits
from .access import authenticate, authorize
from .admission import check_hidden, max_tokens_for, prepare, run_prepare_request
from .chain import sampler_chain
from .errors import AdytonError
from .generation import Generation
from .limits import reserve
from .types import (
    Credentials,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    Principal,
    RequestCost,
    Reservation,
    Usage,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


class Pipeline:
    """The stages of the request path, in order; plugins reach them through
    ``kernel.submit`` / ``embed`` / ``hidden_states`` / ``authenticate`` /
    ``authorize`` (``kernel_api.py``), never as ``kernel.pipeline``."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal the authenticators find for ``credentials``
        (anonymous when none is installed); raises ``Unauthorized``."""
        return await authenticate(self.kernel, credentials)

    async def authorize(self, credentials: Credentials, access: str) -> Principal:
        """The principal for a read-only route that needs ``access``
        ("public", "user", "metrics", "admin"; ``access.authorize``); raises
        ``Unauthorized`` / ``Forbidden``."""
        return await authorize(self.kernel, credentials, access)

    async def submit(self, request: GenerationRequest, credentials: Credentials) -> Generation:
        kernel = self.kernel
        metrics = kernel.metrics
        wire = credentials.wire_format
        try:
            principal = await authenticate(kernel, credentials)
            await run_prepare_request(kernel, request, principal)
            backend, model = kernel.models.resolve(request.model)
            prepared = await prepare(kernel, backend, request, model)
            if request.steering is not None or request.observer is not None:
                check_hidden(request, backend, model, prepared)
            max_tokens = max_tokens_for(request, prepared)
            processors, sampler, vocabulary = await sampler_chain(kernel, request, backend, prepared)
            queue = kernel.queue_for(backend)
            queue.check_admission()
        except AdytonError as exc:
            metrics.rejected(exc, wire)
            raise
        extra = max((p.extra_tokens for p in processors), default=0)
        cost = RequestCost(
            model=model.id,
            prompt_tokens=prepared.n_tokens,
            max_completion_tokens=(max_tokens + extra) * request.n,
            wire_format=wire,
        )
        reservations = await reserve(kernel, principal, cost, wire)
        headers: dict[str, str] = {}
        for reservation in reservations:
            headers.update(reservation.headers)
        for processor in processors:
            headers.update(processor.response_headers())
        generation = Generation(
            pipeline=self,
            request=request,
            principal=principal,
            backend=backend,
            prepared=prepared,
            max_tokens=max_tokens,
            processors=processors,
            sampler=sampler,
            vocabulary=vocabulary,
            reservations=reservations,
            headers=headers,
            wire_format=wire,
        )
        generation.start()
        return generation

    async def embed(self, request: EmbeddingRequest, credentials: Credentials) -> EmbeddingResult:
        """Embeddings through the same admission, limits and engine queue as a
        generation (``embeddings.embed``). Raises ``AdytonError``."""
        return await embeddings.embed(self.kernel, request, credentials)

    async def hidden_states(self, inputs: list[str], layers: Sequence[int], model_name: str | None,
                            credentials: Credentials) -> tuple[Any, list[dict[int, np.ndarray]], Usage]:
        """The hidden states of ``inputs`` at ``layers``, through the same
        admission, limits and engine queue as ``embed``
        (``embeddings.hidden_states``)."""
        return await embeddings.hidden_states(self.kernel, inputs, layers, model_name, credentials)

    async def settle(self, reservations: list[Reservation], usage: Usage, outcome: str) -> None:
        """Settle ``reservations`` with the real ``usage`` (``limits.settle``)."""
        await limits.settle(reservations, usage, outcome)
