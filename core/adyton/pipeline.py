"""The one request path.

A wire format calls ``await kernel.pipeline.submit(request, credentials)``.
``submit`` runs admission on the event loop — authenticate, resolve the
model, prepare (tokenize), build the sampler chain (refusing unenforceable
constraints), reserve limits, check the queue — and raises an ``AdytonError``
if any step refuses. Otherwise it returns a running ``Generation``: iterate
it for events (streaming) or ``await generation.result()``. Leaving early
(``aclose()``, or the handler task being cancelled because the client went
away) removes the request from the queue or stops its generation within one
token step. The limits reservation is settled exactly once, with the tokens
actually produced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

import numpy as np

from .errors import (
    AdytonError,
    BackendError,
    ContextTooLong,
    Forbidden,
    InvalidRequest,
    RateLimited,
    ServerBusy,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedConstraint,
)
from .hookspecs import Backend, Limiter, LogitsProcessor, Sampler
from .queue import EngineJob, mailbox_for
from .sampling import RepetitionGuard, StopMatcher, log_softmax
from .types import (
    ANONYMOUS,
    Choice,
    ChoiceFinished,
    Credentials,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
    PreparedPrompt,
    Principal,
    RequestCost,
    Reservation,
    SamplingParams,
    Started,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
    Vocabulary,
    Waiting,
)

if TYPE_CHECKING:  # pragma: no cover
    from .app import Kernel

log = logging.getLogger("adyton.pipeline")

_END = object()

#: the generations started while serving one HTTP request (see
#: ``close_orphans``); None outside a request
_REQUEST_GENERATIONS: contextvars.ContextVar[list["Generation"] | None] = contextvars.ContextVar(
    "adyton_request_generations", default=None)


class close_orphans:
    """ASGI middleware: when the server is done with an HTTP request — the
    response was sent, or the client went away and the handler was
    cancelled — close every generation the request started and left
    running. A wire format that returned a streaming body whose iterator
    never started (the client left between the handler's return and the
    first chunk), or that stopped iterating outside its ``finally``, would
    otherwise leave a generation running for nobody and holding its
    reservation. Closing a finished generation costs nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        started: list[Generation] = []
        token = _REQUEST_GENERATIONS.set(started)
        try:
            await self.app(scope, receive, send)
        finally:
            _REQUEST_GENERATIONS.reset(token)
            for generation in started:
                await asyncio.shield(generation.aclose())


class _Channel:
    """Events for one consumer, from the event loop and from the engine
    thread. The engine thread wakes the loop only when the consumer is
    actually waiting, through the coalescing loop mailbox."""

    __slots__ = ("_loop", "_mailbox", "_items", "_waiter", "_wake_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._mailbox = mailbox_for(loop)
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_pending = False

    def put(self, item: Any) -> None:
        """From the event loop."""
        self._items.append(item)
        self._wake()

    def put_threadsafe(self, item: Any) -> None:
        """From the engine thread. (Append first, then look for a waiter: the
        consumer sets its waiter first, then looks for items, so one of the
        two always sees the other.)"""
        self._items.append(item)
        if self._waiter is not None and not self._wake_pending:
            self._wake_pending = True
            self._mailbox.post(self._wake_from_thread)

    def _wake_from_thread(self) -> None:
        self._wake_pending = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Any:
        """The next item; ``asyncio.TimeoutError`` after ``timeout`` s of silence.

        The timeout is a timer on the waiter, not ``asyncio.wait_for``: on
        Python 3.11 ``wait_for`` returns the result, swallowing the
        cancellation, when an item arrives in the same loop pass as the
        cancel — and a streaming client that went away right then would keep
        the engine generating for nobody."""
        while not self._items:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            try:
                if self._items:  # arrived while the waiter was being set
                    break
                if timeout is not None:
                    timer = self._loop.call_later(timeout, _time_out, waiter)
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if waiter.result() is _TIMED_OUT and not self._items:
                raise asyncio.TimeoutError
        return self._items.popleft()


_TIMED_OUT = object()


def _time_out(waiter: "asyncio.Future[Any]") -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


async def resolve_all(results: Sequence[Any]) -> list[Any]:
    """Await the awaitables among collect-all hook results."""
    out = []
    for result in results:
        if inspect.isawaitable(result):
            result = await result
        out.append(result)
    return out


#: prompts up to this many characters are prepared on the event loop
INLINE_PREPARE_CHARS = 8192


def _text_chars(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(m.content) for m in request.messages)
    return len(request.prompt or "")


class Pipeline:
    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel

    # -- admission ----------------------------------------------------------

    async def authenticate(self, credentials: Credentials) -> Principal:
        authenticators = self.kernel.authenticators
        if not authenticators:
            return ANONYMOUS
        for authenticator in authenticators:
            principal = await authenticator.authenticate(credentials)
            if principal is not None:
                return principal
        if credentials.kind == "none" or not credentials.secret:
            raise Unauthorized("missing credentials: send an API key", code="missing_api_key")
        raise Unauthorized("invalid credentials", code="invalid_api_key")

    async def authorize(self, credentials: Credentials, access: str) -> Principal:
        """The principal for a read-only route that needs ``access``
        ("public", "user", "metrics", "admin"), asking each authenticator's
        ``authorize``; open (anonymous) when no authenticator is installed.
        Raises ``Unauthorized`` (no or unknown credentials) or ``Forbidden``
        (valid, but not enough)."""
        authenticators = self.kernel.authenticators
        if access == "public" or not authenticators:
            return ANONYMOUS
        for authenticator in authenticators:
            principal = await authenticator.authorize(credentials, access)
            if principal is not None:
                return principal
        what = "an API key" if access == "user" else f"credentials with '{access}' access"
        if credentials.kind == "none" or not credentials.secret:
            raise Unauthorized(f"missing credentials: this route needs {what}", code="missing_api_key")
        if access == "user":
            raise Unauthorized("invalid credentials", code="invalid_api_key")
        raise Forbidden(f"these credentials do not grant '{access}' access", code="insufficient_access")

    async def submit(self, request: GenerationRequest, credentials: Credentials) -> "Generation":
        kernel = self.kernel
        metrics = kernel.metrics
        wire = credentials.wire_format
        try:
            principal = await self.authenticate(credentials)
            hook = kernel.pm.hook
            if hook.prepare_request.get_hookimpls():
                await resolve_all(hook.prepare_request(request=request, principal=principal, kernel=kernel))
            if request.extra:
                names = ", ".join(repr(k) for k in sorted(request.extra))
                raise InvalidRequest(
                    f"no installed plugin handles the parameter(s) {names}",
                    param=sorted(request.extra)[0], code="unsupported_parameter",
                )
            backend, model = kernel.models.resolve(request.model)
            prepared = await self._prepare(backend, request, model)
            if request.steering is not None or request.observer is not None:
                self._check_hidden(request, backend, model, prepared)
            max_tokens = self._max_tokens(request, prepared)
            processors, sampler, vocabulary = await self._sampler_chain(request, backend, prepared)
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
        reservations = await self._reserve(principal, cost, wire)
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

    async def _prepare(self, backend: Backend, request: GenerationRequest, model: Any) -> PreparedPrompt:
        """``Backend.prepare``: on the kernel's worker threads for a big
        prompt (templating and tokenizing megabytes takes seconds, during
        which the loop would answer nobody), inline for a small one (cheaper
        than the thread hop)."""
        if _text_chars(request) <= INLINE_PREPARE_CHARS:
            return backend.prepare(request, model)
        return await self.kernel.offload(backend.prepare, request, model)

    async def embed(self, request: EmbeddingRequest, credentials: Credentials) -> EmbeddingResult:
        """Embeddings through the same admission, limits and engine queue as a
        generation: authenticate, resolve the model, check that its backend
        embeds (``Backend.embedding_dimensions``; 400 naming the model if
        not), tokenize (``prepare_embeddings``; each input must fit the
        context), reserve the input tokens (no completion), run
        ``Backend.embed`` on the engine queue and settle exactly once, with
        the input tokens once the engine ran (cancelled too) and nothing if it
        never did. A client that goes away leaves the queue or stops the
        engine between inputs. Raises ``AdytonError``."""
        kernel = self.kernel
        wire = credentials.wire_format
        try:
            principal = await self.authenticate(credentials)
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
        run = _EmbeddingRun(self, backend, model, token_ids, wire)
        run.reservations = await self._reserve(
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

    @staticmethod
    def _check_hidden(request: GenerationRequest, backend: Backend, model: Any,
                      prepared: PreparedPrompt) -> None:
        """A request's ``steering`` / ``observer`` must be honoured by its
        backend (400 naming the model otherwise), then travel with the prompt."""
        steering, observer = request.steering, request.observer
        if steering is not None:
            allowed = backend.steering_layers(model)
            if allowed is None:
                raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') cannot be steered",
                                     param=steering.source, code="model_not_supported")
            if steering.model != model.id:
                raise InvalidRequest(f"this steering vector was made for model '{steering.model}', "
                                     f"not '{model.id}'", param=steering.source, code="invalid_value")
            bad = sorted(set(steering.vectors) - set(allowed))
            if bad:
                raise InvalidRequest(f"model '{model.id}' cannot be steered at layer(s) "
                                     f"{', '.join(map(str, bad))}", param=steering.source, code="invalid_value")
        if observer is not None:
            shape = backend.hidden_layers(model)
            if shape is None:
                raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') does not expose "
                                     f"hidden states", param="model", code="model_not_supported")
            bad = sorted(layer for layer in observer.layers if not 0 <= layer < shape[0])
            if bad:
                raise InvalidRequest(f"model '{model.id}' has {shape[0]} layers; layer(s) "
                                     f"{', '.join(map(str, bad))} do not exist", code="invalid_value")
        prepared.steering, prepared.observer = steering, observer

    async def hidden_states(self, inputs: list[str], layers: Sequence[int], model_name: str | None,
                            credentials: Credentials) -> tuple[Any, list[dict[int, np.ndarray]], Usage]:
        """The hidden states of ``inputs`` (texts, tokenized by the model's
        backend as raw prompts) at ``layers``, through the same admission,
        limits and engine queue as ``embed``: the input tokens are the usage.
        Returns (the ModelInfo, one ``{layer: array[n_tokens, hidden]}`` per
        input, the usage). 400 naming the model if its backend cannot read
        hidden states or the layers do not exist."""
        kernel = self.kernel
        wire = credentials.wire_format
        try:
            principal = await self.authenticate(credentials)
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
                prepared = await self._prepare(backend, GenerationRequest(prompt=text, model=model.id), model)
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
        run = _EmbeddingRun(self, backend, model, token_ids, wire,
                            work=lambda cancelled: backend.hidden_states(model, token_ids, wanted, cancelled))
        run.reservations = await self._reserve(
            principal, RequestCost(model=model.id, prompt_tokens=run.n_tokens, max_completion_tokens=0,
                                   wire_format=wire), wire)
        states = await run.run()
        return model, states, run.usage

    def _max_tokens(self, request: GenerationRequest, prepared: PreparedPrompt) -> int:
        room = prepared.context_length - prepared.n_tokens
        if room <= 0:
            raise ContextTooLong(
                f"the prompt is {prepared.n_tokens} tokens; the context of model "
                f"'{prepared.model.id}' is {prepared.context_length} tokens",
                param="messages" if request.messages is not None else "prompt",
            )
        if request.max_tokens is None:
            return room
        if request.max_tokens > room:
            if request.fit_context:
                return room
            raise ContextTooLong(
                f"this model's maximum context length is {prepared.context_length} tokens; "
                f"the prompt uses {prepared.n_tokens} and max_tokens asks for "
                f"{request.max_tokens} more",
                param="max_tokens",
            )
        return request.max_tokens

    async def _sampler_chain(
        self, request: GenerationRequest, backend: Backend, prepared: PreparedPrompt
    ) -> tuple[list[LogitsProcessor], Sampler, Vocabulary | None]:
        kernel = self.kernel
        if not backend.exposes_logits:
            # a self-sampling backend maps what needs logits to its engine's own
            # parameters, or refuses it here (400 naming the model)
            backend.check_sampling(request, prepared.model)
            return [], kernel.pm.hook.sampler(request=request, kernel=kernel), None
        hook = kernel.pm.hook.logits_processors
        has_processors = bool(hook.get_hookimpls())
        # the vocabulary serves processors, and logprobs' token texts
        wanted = backend.exposes_logits and (has_processors or request.logprobs is not None)
        vocabulary = backend.vocabulary(prepared.model) if wanted else None
        processors: list[LogitsProcessor] = []
        if has_processors:
            results = await resolve_all(
                hook(request=request, model=prepared.model, vocabulary=vocabulary, kernel=kernel)
            )
            for result in results:
                if result is None:
                    continue
                if isinstance(result, LogitsProcessor):
                    processors.append(result)
                else:
                    processors.extend(result)
        self._check_claimed(request, processors)
        sampler = kernel.pm.hook.sampler(request=request, kernel=kernel)
        return processors, sampler, vocabulary

    @staticmethod
    def _check_claimed(request: GenerationRequest, processors: list[LogitsProcessor]) -> None:
        """Fail closed: every constraint must be claimed by a processor."""
        claimed = [c for p in processors for c in p.handles]
        for constraint in request.constraints:
            if not any(c is constraint or c == constraint for c in claimed):
                raise UnsupportedConstraint(
                    f"no installed plugin can enforce the {constraint.kind} constraint "
                    f"from '{constraint.source}' (install adyton-guided for guided decoding)",
                    param=constraint.source,
                )

    async def _reserve(self, principal: Principal, cost: RequestCost, wire: str) -> list[Reservation]:
        reservations: list[tuple[Limiter, Reservation]] = []
        try:
            for limiter in self.kernel.limiters:
                reservation = await limiter.reserve(principal, cost)
                reservation.data = (limiter, reservation.data)
                reservations.append((limiter, reservation))
        except BaseException as exc:
            for limiter, reservation in reversed(reservations):
                await self._settle_one(limiter, reservation, Usage(), "rejected")
            if isinstance(exc, AdytonError):
                if isinstance(exc, RateLimited):
                    for _, reservation in reservations:
                        exc.headers = {**reservation.headers, **exc.headers}
                self.kernel.metrics.rejected(exc, wire)
            raise
        return [r for _, r in reservations]

    async def settle(self, reservations: list[Reservation], usage: Usage, outcome: str) -> None:
        for reservation in reservations:
            limiter, _ = reservation.data
            await self._settle_one(limiter, reservation, usage, outcome)

    async def _settle_one(self, limiter: Limiter, reservation: Reservation, usage: Usage, outcome: str) -> None:
        own = reservation.data
        if isinstance(own, tuple) and len(own) == 2 and own[0] is limiter:
            reservation.data = own[1]
        try:
            await limiter.settle(reservation, usage, outcome)
        except Exception:  # noqa: BLE001 - a failing limiter must not break the response
            log.exception("limiter %s failed to settle a reservation", limiter.name)
        finally:
            reservation.data = (limiter, reservation.data)


class _EmbeddingRun:
    """One admitted embedding request on the engine queue (``Pipeline.embed``;
    ``work(cancelled)`` replaces ``Backend.embed`` for ``hidden_states``)."""

    def __init__(self, pipeline: Pipeline, backend: Backend, model: Any,
                 token_ids: list[list[int]], wire_format: str, work: Any = None) -> None:
        self.work = work
        self.pipeline = pipeline
        self.backend = backend
        self.model = model
        self.token_ids = token_ids
        self.n_tokens = sum(len(ids) for ids in token_ids)
        self.wire_format = wire_format
        self.reservations: list[Reservation] = []
        self.usage = Usage()
        self.cancelled = threading.Event()

    def _work(self) -> list[np.ndarray]:
        """Engine thread."""
        self.pipeline.kernel.models.load_blocking(self.backend, self.model.id)
        if self.work is not None:
            return self.work(self.cancelled)
        return self.backend.embed(self.model, self.token_ids, self.cancelled)

    async def run(self) -> list[np.ndarray]:
        kernel = self.pipeline.kernel
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
            except Exception as exc:  # noqa: BLE001 - never a bare 500 from a backend bug
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
            await asyncio.shield(self.pipeline.settle(self.reservations, self.usage, outcome))


class _Chain:
    """The per-choice step function a backend calls with each token's logits:
    processors, then the sampler, recording logprobs when asked. Runs on the
    engine thread."""

    def __init__(self, processors: list[LogitsProcessor], sampler: Sampler,
                 vocabulary: Vocabulary | None, top_logprobs: int | None) -> None:
        self.processors = processors
        self.sampler = sampler
        self.vocabulary = vocabulary
        self.top_logprobs = top_logprobs
        self.generated: list[int] = []
        self.last_logprob: TokenLogprob | None = None
        self._copy = bool(processors) or getattr(sampler, "modifies_logits", True)

    def reset(self, seed: int | None) -> None:
        self.generated = []
        self.sampler.reset(seed)
        for processor in self.processors:
            processor.reset()

    def __call__(self, logits: np.ndarray) -> int:
        if self._copy:
            logits = np.array(logits, dtype=np.float32, copy=True)
            for processor in self.processors:
                processor.process(self.generated, logits)
            self.sampler.adjust(logits)
        token = self.sampler.choose(logits)
        for processor in self.processors:
            processor.accept(token)
        self.generated.append(token)
        if self.top_logprobs is not None:
            self.last_logprob = self._logprob(logits, token)
        return token

    def is_complete(self) -> bool:
        return all(p.is_complete() for p in self.processors)

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        if self.vocabulary is None or token_id >= self.vocabulary.size:
            return "", []
        raw = self.vocabulary.token_bytes[token_id]
        return raw.decode("utf-8", errors="replace"), list(raw)

    def _logprob(self, logits: np.ndarray, token: int) -> TokenLogprob:
        lp = log_softmax(logits)
        text, raw = self._token(token)
        tops: list[TopLogprob] = []
        k = self.top_logprobs or 0
        if k:
            ids = np.argpartition(-lp, k - 1)[:k]
            ids = ids[np.argsort(-lp[ids], kind="stable")]
            for i in ids:
                t, b = self._token(int(i))
                tops.append(TopLogprob(t, float(lp[i]), b))
        return TokenLogprob(text, float(lp[token]), raw, tops)


class Generation:
    """A request that passed admission. Iterate for events, or
    ``await result()``. Always ends settled, whichever way it ends."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        request: GenerationRequest,
        principal: Principal,
        backend: Backend,
        prepared: PreparedPrompt,
        max_tokens: int,
        processors: list[LogitsProcessor],
        sampler: Sampler,
        vocabulary: Vocabulary | None,
        reservations: list[Reservation],
        headers: dict[str, str],
        wire_format: str,
    ) -> None:
        self.pipeline = pipeline
        self.kernel = pipeline.kernel
        self.request = request
        self.principal = principal
        self.backend = backend
        self.prepared = prepared
        self.max_tokens = max_tokens
        self.processors = processors
        self.reservations = reservations
        self.headers = headers
        self.wire_format = wire_format
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.model = prepared.model.id
        #: a self-sampling backend's prompt counts once its engine answers
        self.usage = Usage(prompt_tokens=prepared.n_tokens if backend.exposes_logits else 0)
        self._started_sent = False
        self.finish_reasons: dict[int, FinishReason] = {}
        #: monotonic time when ``request.time_budget_s`` is spent (None: no budget)
        self.deadline = None if request.time_budget_s is None else time.monotonic() + request.time_budget_s
        self._chain = _Chain(processors, sampler, vocabulary, request.logprobs)
        self._events = _Channel(asyncio.get_running_loop())
        self._cancelled = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumed = False
        owner = _REQUEST_GENERATIONS.get()
        if owner is not None:  # closed when its HTTP request is over
            owner.append(self)

    # -- running --------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"generation-{self.id}")
        self.kernel.track(self._task)

    async def _run(self) -> None:
        """Loop side: queue the engine work, wait for it, settle, report."""
        metrics = self.kernel.metrics
        queue = self.kernel.queue_for(self.backend)
        outcome = "error"
        job = EngineJob(self._engine_work)
        try:
            try:
                position = queue.submit(job)
            except AdytonError as exc:
                metrics.rejected(exc, self.wire_format)
                outcome = "rejected"
                raise
            if position is not None:
                self._events.put(Waiting(position))
            try:
                await job.wait_done()
            except ServiceUnavailable as exc:
                if job.started:
                    raise
                metrics.rejected(exc, self.wire_format)  # could not start in time
                outcome = "rejected"
                raise
            except asyncio.CancelledError:
                # the client went away: leave the queue, or stop the engine
                # within one step and keep accounting until it has let go
                if queue.abandon(job) is None:
                    self._cancelled.set()
                    with contextlib.suppress(BaseException):
                        await job.wait_done()
                raise
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            self._events.put(_END)
            raise
        except AdytonError as exc:
            self._events.put(exc)
        except Exception as exc:  # noqa: BLE001 - never a bare 500 from a backend bug
            log.error("generation %s failed", self.id, exc_info=exc)
            self._events.put(BackendError(f"the backend failed: {type(exc).__name__}: {exc}"))
        finally:
            metrics.finished(self, outcome)
            if self.reservations:  # (shield() costs a task: only when there is something to settle)
                await asyncio.shield(self.pipeline.settle(self.reservations, self.usage, outcome))
            self._events.put(_END)

    def _engine_work(self) -> None:
        """Engine thread: load the model if needed, then run every choice."""
        self.kernel.models.load_blocking(self.backend, self.prepared.model.id)
        if self.backend.exposes_logits:  # (a self-sampling one starts at its first piece)
            self._started()
        started = time.monotonic()
        for index in range(self.request.n):
            if self._cancelled.is_set():
                return
            seed = None if self.request.seed is None else self.request.seed + index
            self._run_choice(index, seed, started)

    def _started(self) -> None:
        if not self._started_sent:
            self._started_sent = True
            self._events.put_threadsafe(Started(self.model))

    def _run_choice(self, index: int, seed: int | None, started: float) -> None:
        """Engine thread: one choice, token by token, with stop strings and
        limits applied here so the backend is closed the moment we are done."""
        emit = self._events.put_threadsafe
        chain = self._chain
        chain.reset(seed)
        stopper = StopMatcher(self.request.stop)
        soft_limit = self.max_tokens
        hard_limit = soft_limit + max((p.extra_tokens for p in self.processors), default=0)
        cancelled = self._cancelled
        want_logprobs = self.request.logprobs is not None
        count = 0
        emitted: list[str] = []
        pending_logprobs: list[TokenLogprob] = []
        finish: FinishReason | None = None
        first_token_at = 0.0
        guard = RepetitionGuard(self.request.stop_repetition) if self.request.stop_repetition else None
        deadline = self.deadline
        self_sampling = not self.backend.exposes_logits
        engine_usage: Usage | None = None
        engine_reports: dict[str, Any] = {}
        step = SamplingParams(self.request, seed, index) if self_sampling else chain
        pieces = self.backend.generate(self.prepared, step, hard_limit, cancelled)
        try:
            for piece in pieces:
                if cancelled.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if not first_token_at:
                    first_token_at = time.monotonic()
                    self._started()
                if self_sampling:
                    if piece.usage is not None:
                        engine_usage = piece.usage
                    if want_logprobs and piece.logprobs:
                        pending_logprobs.extend(piece.logprobs)
                    if piece.reports:
                        engine_reports.update(piece.reports)
                if piece.finish_reason is FinishReason.STOP and not piece.text:
                    finish = FinishReason.STOP  # end of sequence: not a visible token
                    break
                count += 1
                if want_logprobs and chain.last_logprob is not None:
                    pending_logprobs.append(chain.last_logprob)
                text, hit = stopper.feed(piece.text)
                if text or (hit and pending_logprobs):
                    emitted.append(text)
                    emit(TextDelta(index, text, pending_logprobs or None) if want_logprobs else TextDelta(index, text))
                    pending_logprobs = []
                if hit:
                    finish = FinishReason.STOP
                    break
                if piece.finish_reason is not None:
                    finish = piece.finish_reason
                    break
                # (a self-sampling engine's pieces are not tokens: it stops at
                # max_tokens itself and reports its real count on the last piece)
                if count >= soft_limit and not self_sampling and (count >= hard_limit or chain.is_complete()):
                    finish = FinishReason.LENGTH
                    break
                if guard is not None and guard.feed(piece.token_id):
                    self.kernel.metrics.cut_short("repetition", self.wire_format)
                    finish = FinishReason.LENGTH  # a degenerate loop: stop paying for it
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    self.kernel.metrics.cut_short("time_budget", self.wire_format)
                    finish = FinishReason.LENGTH  # the time budget is spent
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            if engine_usage is not None:  # the engine's own count (self-sampling backends)
                self.usage.prompt_tokens = max(self.usage.prompt_tokens, engine_usage.prompt_tokens)
                self.usage.completion_tokens += engine_usage.completion_tokens
            else:
                if count and self_sampling:
                    self.usage.prompt_tokens = max(self.usage.prompt_tokens, self.prepared.n_tokens)
                self.usage.completion_tokens += count
        if finish is None:
            if cancelled.is_set():
                finish = FinishReason.CANCELLED
            else:
                finish = FinishReason.LENGTH if count >= soft_limit else FinishReason.STOP
        if finish is not FinishReason.CANCELLED:
            tail = stopper.flush()
            if tail or pending_logprobs:
                emitted.append(tail)
                emit(TextDelta(index, tail, pending_logprobs or None) if want_logprobs else TextDelta(index, tail))
        if first_token_at:
            self.kernel.metrics.observe_generation(first_token_at - started, count,
                                                   time.monotonic() - first_token_at)
        text = "".join(emitted)
        reports: dict[str, Any] = dict(engine_reports)
        for processor in self.processors:
            report = processor.report(text, finish)
            if report is not None:
                reports[processor.name] = report
        self.finish_reasons[index] = finish
        self._started()
        emit(ChoiceFinished(index, finish, count, reports))

    # -- consuming --------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self.events()

    def events(self, keepalive_s: float | None = None) -> AsyncIterator[GenerationEvent]:
        """Events until the generation ends. Raises the AdytonError that ended
        it, if any. Yields ``Waiting()`` after ``keepalive_s`` of silence
        (default: the ``server.keepalive_s`` setting)."""
        keepalive = keepalive_s if keepalive_s is not None else self.kernel.settings.server.keepalive_s
        return self._consume(keepalive)

    async def _consume(self, keepalive: float | None) -> AsyncIterator[GenerationEvent]:
        """The one consumer of the event channel; no keep-alives when None."""
        if self._consumed:
            raise RuntimeError("a Generation can be consumed once")
        self._consumed = True
        try:
            while True:
                try:
                    item = await self._events.get(keepalive)
                except asyncio.TimeoutError:
                    yield Waiting()
                    continue
                if item is _END:
                    return
                if isinstance(item, AdytonError):
                    raise item
                yield item
        finally:
            await self.aclose()

    async def wait_started(self) -> None:
        """Wait until the request has the engine, or raise why it never will.
        Streaming wire formats call this before sending their headers, so
        that a queue timeout is still a proper 503 with Retry-After.

        A client that goes away meanwhile cancels the handler task (no
        response has started, so nothing else would notice): the request
        then leaves the queue, or stops within one step, and is settled with
        what it produced before the cancellation is passed on."""
        try:
            while True:
                item = await self._events.get()
                if isinstance(item, Started):
                    return
                if isinstance(item, AdytonError):
                    self._consumed = True
                    await self.aclose()
                    raise item
                if item is _END:
                    self._events.put(_END)
                    return
        except asyncio.CancelledError:
            self._consumed = True
            await self.aclose()
            raise

    async def result(self) -> GenerationResult:
        """Run to the end and collect the choices (non-streaming)."""
        texts: dict[int, list[str]] = {i: [] for i in range(self.request.n)}
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(self.request.n)}
        finished: dict[int, ChoiceFinished] = {}
        async for event in self._consume(None):
            if isinstance(event, TextDelta):
                texts[event.index].append(event.text)
                if event.logprobs:
                    logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, ChoiceFinished):
                finished[event.index] = event
        choices = []
        for i in range(self.request.n):
            done = finished.get(i)
            choices.append(
                Choice(
                    index=i,
                    text="".join(texts[i]),
                    finish_reason=done.finish_reason if done else FinishReason.CANCELLED,
                    logprobs=logprobs[i] if self.request.logprobs is not None else None,
                    reports=done.reports if done else {},
                )
            )
        return GenerationResult(
            id=self.id, model=self.model, created=self.created, choices=choices,
            usage=self.usage, headers=self.headers,
        )

    async def aclose(self) -> None:
        """Stop (if still running) and wait until settled. Idempotent."""
        task = self._task
        if task is None or task.done():
            return
        self._cancelled.set()
        task.cancel()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # our caller was cancelled, not the generation:
                raise  # pass it on (the generation still settles on its own)
        except Exception:  # noqa: BLE001 - how it ended was reported to its consumer
            pass
