"""``Generation``: a request that passed admission, running — queued on its
backend's engine, generating token by token on the engine thread (stop
strings, limits, time budget, repetition guard), its events sent to the one
consumer through a ``_Channel``, and settled exactly once however it ends.
``close_orphans`` closes the generations an HTTP request left running."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .chain import _Chain
from .channel import _Channel
from .errors import AdytonError, BackendError, ServiceUnavailable
from .hookspecs import Backend, LogitsProcessor, Sampler
from .queue import EngineJob
from .sampling import RepetitionGuard, StopMatcher
from .types import (
    Choice,
    ChoiceFinished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
    PreparedPrompt,
    Principal,
    Reservation,
    SamplingParams,
    Started,
    TextDelta,
    TokenLogprob,
    Usage,
    Vocabulary,
    Waiting,
)

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

log = logging.getLogger("adyton.pipeline")

_END = object()

#: the generations started while serving one HTTP request (see
#: ``close_orphans``); None outside a request
_REQUEST_GENERATIONS: contextvars.ContextVar[list[Generation] | None] = contextvars.ContextVar(
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
                if generation.running:  # (shield() costs a task: only when there is something to stop)
                    await asyncio.shield(generation.aclose())
            # each generation's task holds a copy of the request's context,
            # which holds this list: emptied, the request's objects are freed
            # by reference counting instead of waiting, as a cycle, for the
            # cyclic collector (which then stalls the loop to walk them)
            started.clear()


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
        self._queue = self.kernel.queue_for(backend)
        #: how the engine work sends its events: straight into the channel
        #: when it runs on the event loop (an inline queue)
        self._emit = self._events.put if self._queue.inline else self._events.put_threadsafe
        self._cancelled = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumed = False
        owner = _REQUEST_GENERATIONS.get()
        if owner is not None:  # closed when its HTTP request is over
            owner.append(self)

    # -- running --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not yet ended (settled)."""
        task = self._task
        return task is not None and not task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"generation-{self.id}")
        self.kernel.track(self._task)

    async def _run(self) -> None:
        """Loop side: queue the engine work, wait for it, settle, report."""
        metrics = self.kernel.metrics
        queue = self._queue
        outcome = "error"
        job = EngineJob(self._engine_work, steps=True)
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
        except Exception as exc:  # never a bare 500 from a backend bug
            log.error("generation %s failed", self.id, exc_info=exc)
            self._events.put(BackendError(f"the backend failed: {type(exc).__name__}: {exc}"))
        finally:
            metrics.finished(self, outcome)
            if self.reservations:  # (shield() costs a task: only when there is something to settle)
                await asyncio.shield(self.pipeline.settle(self.reservations, self.usage, outcome))
            self._events.put(_END)

    def _engine_work(self) -> Iterator[None]:
        """Engine thread (the event loop for an inline queue, a slice of
        steps per loop pass): load the model if needed, then run every
        choice, a step per piece."""
        self.kernel.models.load_blocking(self.backend, self.prepared.model.id)
        if self.backend.exposes_logits:  # (a self-sampling one starts at its first piece)
            self._started()
        started = time.monotonic()
        for index in range(self.request.n):
            if self._cancelled.is_set():
                return
            seed = None if self.request.seed is None else self.request.seed + index
            yield from self._run_choice(index, seed, started)

    def _started(self) -> None:
        if not self._started_sent:
            self._started_sent = True
            self._emit(Started(self.model))

    def _run_choice(self, index: int, seed: int | None, started: float) -> Iterator[None]:
        """Engine thread: one choice, token by token (a step each), with stop
        strings and limits applied here so the backend is closed the moment
        we are done."""
        emit = self._emit
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
                if self_sampling and piece.finish_reason is not None and not piece.text:
                    finish = piece.finish_reason  # an engine's closing marker (e.g. "length"): no token
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
                yield
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

    def events(self, keepalive_s: float | None = None) -> AsyncGenerator[GenerationEvent, None]:
        """Events until the generation ends. Raises the AdytonError that ended
        it, if any. Yields ``Waiting()`` after ``keepalive_s`` of silence
        (default: the ``server.keepalive_s`` setting). An async generator: a
        consumer that stops early ``aclose()``s it."""
        keepalive = keepalive_s if keepalive_s is not None else self.kernel.settings.server.keepalive_s
        return self._consume(keepalive)

    async def _consume(self, keepalive: float | None) -> AsyncGenerator[GenerationEvent, None]:
        """The one consumer of the event channel; no keep-alives when None."""
        if self._consumed:
            raise RuntimeError("a Generation can be consumed once")
        self._consumed = True
        try:
            while True:
                try:
                    item = await self._events.get(keepalive)
                except TimeoutError:
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
        # the channel read as ``_consume`` reads it, without an async
        # generator in between (no keep-alives here: nobody would see them)
        if self._consumed:
            raise RuntimeError("a Generation can be consumed once")
        self._consumed = True
        # only the end matters here, and it comes from the loop (``_run``,
        # once the job is done): the engine thread's events wait for it
        # instead of waking this task token by token
        self._events.thread_wakes = False
        get = self._events.get
        try:
            while True:
                event = await get()
                if event is _END:
                    break
                if isinstance(event, TextDelta):
                    texts[event.index].append(event.text)
                    if event.logprobs:
                        logprobs[event.index].extend(event.logprobs)
                elif isinstance(event, ChoiceFinished):
                    finished[event.index] = event
                elif isinstance(event, AdytonError):
                    raise event
        finally:
            await self.aclose()
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
