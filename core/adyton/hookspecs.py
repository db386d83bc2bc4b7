"""The plugin author's reference: every hook adyton calls, and the objects
the catalog hooks register.

A plugin is any module or object with functions decorated ``@adyton.hookimpl``
whose names match the hooks below. Ship it as a distribution with an entry
point in the group ``adyton``::

    [project.entry-points.adyton]
    myfeature = "adyton_myfeature"

How results combine:

* **catalog hooks** (``register_*``) receive a ``register`` callback. Call it
  once per object you provide. The kernel validates the object, refuses
  duplicates (naming both plugins) and remembers which plugin owns what.
  Return nothing. Synchronous.
* **collect-all hooks** (``startup``, ``shutdown``, ``logits_processors``)
  call every implementation; each may return a plain value or an awaitable,
  and the kernel awaits them all.
* **pick-one hooks** (``sampler``) stop at the first non-None result. They are
  synchronous. Kernel fallbacks (``adyton.default_plugins``) are registered
  ``trylast`` so any plugin overrides them.

In which order: **pluggy's call order, everywhere** — ``@hookimpl(tryfirst=True)``
implementations first, ``trylast=True`` ones last, and among equals the
plugin registered last first. Plugins are registered in this order: the
installed entry points (group ``adyton``) in name order, then ``create_app(plugins=[...])``
in list order, then the kernel fallbacks. Whether the kernel calls a hook
through pluggy or one implementation at a time (``adyton.plugins.in_call_order``),
the order is the same, so each rule below follows from it
(``tests/test_plugin_order.py`` tests each):

* **authenticators** are asked in call order; the first that returns a
  ``Principal`` wins (``authenticate`` and ``authorize`` alike). None: 401.
* **limiters** reserve in call order and all must admit; when one refuses,
  the reservations already made are released in reverse order. Response
  headers: a later limiter's header of the same name replaces an earlier
  one's (a refusal carries the refusing limiter's own).
* **backends**: their models are listed in call order, so for a model id or
  alias two backends both list, the backend of the plugin called first
  serves it; with no model named, the first backend with a loaded model;
  with no ``[models] default``, the first model listed is the default.
* **wire formats** are mounted in call order: for the same route (path and
  method) the wire format called first serves it. An error outside any
  route is rendered by the wire format whose ``url_prefixes`` match the path
  longest; on a tie, the one called first.
* catalog names (backends, wire formats, authenticators, limiters) and
  **settings sections** are unique: a second registration is refused at
  startup, naming both plugins. **CLI commands** (``register_commands``) too:
  a command name that another plugin, or the kernel, already added is refused.
* **prepare_request** hooks run in call order (a ``trylast`` one sees what
  the others did to the request).
* **logits processors** are applied to each token's logits in call order (a
  plugin's list in list order), then the sampler's ``adjust``; the
  **sampler** is the first non-None in call order.
* **startup** hooks run in call order (a failure stops startup, and later
  ones do not run); **shutdown** hooks in the reverse order, the plugin that
  started first stopping last (each runs even if another fails).

The request path, in the order the kernel calls things, with the file of
``adyton`` that implements each stage (one stage, one file)::

    create_app mounts each WireFormat's blueprint                  (app.py)
    WireFormat route parses JSON -> GenerationRequest + Credentials
      -> kernel.submit runs the stages below, in order             (pipeline.py)
      -> Authenticator.authenticate  (register_authenticators)     (access.py)
      -> prepare_request hooks (extension parameters, policies)    (admission.py)
      -> the model name resolved to a backend and model            (models.py)
      -> Backend.prepare (register_backends), steering/observer
         and context checks                                        (admission.py)
      -> logits_processors / sampler hooks (fail closed: 400
         before anything is counted; a self-sampling backend:
         Backend.check_sampling)                                   (chain.py)
      -> the engine queue's admission (429 busy)                   (queue.py)
      -> Limiter.reserve  (register_limiters)                      (limits.py)
      -> engine queue (503 timeout), Backend.generate calling
         the sampler chain once per token, stop strings, limits    (generation.py)
      -> events to the one consumer, loop <-> engine thread        (channel.py)
      -> Limiter.settle with the real usage                        (limits.py)
      -> WireFormat renders the events / result / AdytonError;
         errors outside a wire format's routes                     (http_errors.py)

Around it: the ``Kernel`` handed to hooks, its catalogs, startup and
shutdown (``kernel.py``); metrics (``metrics.py``); OpenAPI completion
(``openapi.py``); CORS (``cors.py``); ``require_access`` for read-only
routes (``access.py``).

Embeddings take the same path without the sampler (``embeddings.py``):
``kernel.embed`` -> authenticate -> ``Backend.embedding_dimensions``
/ ``prepare_embeddings`` -> ``Limiter.reserve`` (input tokens, no
completion) -> engine queue -> ``Backend.embed`` -> ``Limiter.settle``.

Hidden states (``kernel.hidden_states``, ``embeddings.py``) take
the embeddings path with ``Backend.hidden_layers`` / ``hidden_states``. A
request's ``steering`` and ``observer`` (set by a plugin's
``prepare_request``) are checked against ``Backend.steering_layers`` /
``hidden_layers`` right after ``Backend.prepare`` (``admission.py``): 400
naming the model if the backend cannot honour them.

Everything in ``adyton.types`` and ``adyton.errors`` is part of this contract,
and so is the ``Kernel`` hooks receive, as far as docs/kernel.md documents it
(submit, authenticate, resolve_model, section, state, offload, ...): a plugin
uses nothing else of it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pluggy

from .errors import UnsupportedConstraint
from .types import (
    Constraint,
    Credentials,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    PreparedPrompt,
    Principal,
    RequestCost,
    Reservation,
    TokenPiece,
    Usage,
    Vocabulary,
)

if TYPE_CHECKING:  # pragma: no cover
    import click
    import quart

    from .errors import AdytonError
    from .kernel import Kernel

hookspec = pluggy.HookspecMarker("adyton")
hookimpl = pluggy.HookimplMarker("adyton")

#: ``step(logits) -> token_id``: the sampler chain a backend calls once per
#: token with the logits of the last position (a float32 vector the size of
#: the vocabulary; the chain may modify it in place).
StepFunction = Callable[[np.ndarray], int]


# ==========================================================================
# Objects the catalog hooks register
# ==========================================================================


class Backend(ABC):
    """A model engine. Register with ``register_backends``.

    Thread model: ``vocabulary`` and ``list_models`` are called on the event
    loop and must be quick. ``prepare`` may run on the event loop (small
    prompts) or on one of the kernel's worker threads (big prompts, see
    ``Kernel.offload``), possibly while another ``prepare`` or ``generate``
    runs: it must be thread-safe and must not load weights. ``load_model``
    and ``generate`` are blocking and run in an engine thread, never two at
    once on one backend unless ``max_concurrency > 1`` (on the event loop
    if the backend declares ``runs_inline``).

    Concurrency: the kernel gives each backend one engine queue with
    ``max_concurrency`` engine threads (read once, when the app is built).
    With 1 (ctransformers), jobs run one after the other. With N > 1 (a
    batching engine with N sequence slots), up to N jobs run at once, each
    on its own engine thread: each job calls ``load_model`` if
    ``loaded_model()`` is not its model, then ``generate`` — so N
    ``generate`` calls (and ``load_model`` calls) may overlap, and the
    backend must make that safe: a switch must wait until the sequences of
    the old model are done, and a ``generate`` must never run ``prompt`` on
    other weights than ``prompt.model``'s (adyton-llamacpp leases the
    loaded model per generation; see its backend module). Typically each
    ``generate`` joins a shared batch and yields its own sequence's pieces;
    ``step`` is that request's own sampler chain (not thread-safe across
    requests, but only ever called from its own ``generate``). The queue's
    promises hold for every N: with N running and ``queue.max_waiting``
    waiting, the next request gets 429; one that cannot start within
    ``queue.max_wait_s`` gets 503 with a Retry-After of (position + running)
    / N x the mean job time; a cancelled generation (``cancelled`` set, or
    the generator closed) must leave its slot within one step, so the next
    waiting job starts at once.
    """

    #: unique name, e.g. "llama"
    name: str = ""
    #: response headers this object (or its plugin's logits processors) adds,
    #: e.g. ``("x-ratelimit-remaining-requests",)``: browsers may read them
    #: (CORS; ``Kernel.exposed_headers``, docs/kernel.md)
    exposed_headers: Sequence[str] = ()
    #: how many requests may run on this backend at once: its queue's engine
    #: threads (a batching engine: its sequence slots); see the class docstring
    max_concurrency: int = 1
    #: True only for a backend whose engine work never blocks: ``load_model``,
    #: each step of ``generate``'s iterator, ``embed`` and ``hidden_states``
    #: return within microseconds, waiting on no I/O, on no lock another
    #: thread holds and on no heavy computation (a scripted or synthetic
    #: engine, one that replays answers computed elsewhere). The kernel then
    #: runs its jobs on the event loop instead of on engine threads (a
    #: generation a slice of ~2 ms of tokens per loop pass, so the loop
    #: answers others meanwhile; ``queue.py``): no hand-off (GIL transfers,
    #: thread and loop wake-ups), which is most of the kernel's own time when
    #: a job takes microseconds. The queue's promises are the same (429 when
    #: the line is full, 503 + Retry-After past ``queue.max_wait_s``, a
    #: client that leaves sets ``cancelled`` and the job stops within a step,
    #: settled exactly once). Read once, when the app is built. A backend
    #: that may block must leave it False — while a step runs, the server
    #: answers nobody: every first-party engine does (adyton-llama and
    #: adyton-llamacpp compute, adyton-upstream waits on HTTP reads).
    runs_inline: bool = False
    #: False for engines that sample themselves and cannot hand logits to the
    #: kernel (remote OpenAI-compatible engines): a *self-sampling* backend.
    #: For such a backend the kernel
    #:
    #: * asks ``check_sampling`` at admission instead of building a sampler
    #:   chain (no ``logits_processors`` hooks run): every feature that needs
    #:   logits is either mapped to the engine's own parameter or refused
    #:   there with a 400 naming the model — never silently dropped;
    #: * passes a ``SamplingParams`` (the request and this choice's seed) as
    #:   ``step`` to ``generate``;
    #: * takes logprobs from ``TokenPiece.logprobs``, reports (a verifier's)
    #:   from ``TokenPiece.reports`` and the real usage from
    #:   ``TokenPiece.usage`` (else it counts pieces, and charges the prompt
    #:   only once a choice produced a piece: a request that failed before
    #:   its first token costs nothing);
    #: * does not cut a choice after ``max_tokens`` pieces (its pieces need
    #:   not be single tokens): ``generate`` passes ``max_tokens`` on to its
    #:   engine and stops reading after that many pieces at most;
    #: * reports the request started (streaming headers) only at its first
    #:   piece, so an error before it — every replica down (503 +
    #:   Retry-After), ``BadGateway`` (502), ``GatewayTimeout`` (504), a
    #:   ``RateLimited`` passed on — keeps its own HTTP status.
    #:
    #: A self-sampling backend that accepts a constraint must **verify** the
    #: output against it before yielding any of it (buffer, then check) and
    #: raise ``BadGateway`` if it fails: guided output is fail-closed whoever
    #: produced it (report the check in ``TokenPiece.reports``).
    exposes_logits: bool = True

    @abstractmethod
    def list_models(self) -> list[ModelInfo]:
        """Every model this backend can serve now (cheap; called often)."""

    @abstractmethod
    def loaded_model(self) -> str | None:
        """The id of the model in memory, or None."""

    @abstractmethod
    def load_model(self, model_id: str) -> None:
        """Make ``model_id`` the loaded model (unloading the previous one).
        Blocking; raise ``adyton.errors.BackendError`` with a clear message
        on failure."""

    @abstractmethod
    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        """Render (chat template) and tokenize the request for ``model``,
        which need not be loaded. Raise ``InvalidRequest`` for input the model
        cannot take. May run off the event loop (see the thread model above);
        its text is valid Unicode (``adyton.read_json_body`` refuses lone
        surrogates). The kernel checks prompt + max_tokens against
        ``PreparedPrompt.context_length``."""

    def check_sampling(self, request: GenerationRequest, model: ModelInfo) -> None:
        """Self-sampling backends only (``exposes_logits = False``): refuse,
        at admission, any feature of ``request`` that needs logits and that
        the engine cannot do itself — raise ``UnsupportedConstraint`` (for
        ``constraints``) or ``InvalidRequest`` (``logprobs``, ``logit_bias``,
        a sampling parameter the engine lacks), naming ``model``. What it
        does not refuse, ``generate`` must honour (see ``exposes_logits``).
        The default refuses constraints, logprobs and logit_bias. Quick; on
        the event loop."""
        what = ("constraints" if request.constraints else "logprobs" if request.logprobs is not None
                else "logit_bias" if request.logit_bias else None)
        if what is not None:
            raise UnsupportedConstraint(
                f"model '{model.id}' runs on backend '{self.name}', which cannot enforce {what}",
                param="logit_bias" if what == "logit_bias" else None,
            )

    def vocabulary(self, model: ModelInfo) -> Vocabulary | None:
        """The tokenizer's vocabulary and encoder, for logits processors.
        None if the backend cannot tell (constraints are then refused)."""
        return None

    @abstractmethod
    def generate(
        self,
        prompt: PreparedPrompt,
        step: StepFunction,
        max_tokens: int,
        cancelled: threading.Event,
    ) -> Iterator[TokenPiece]:
        """Generate after ``prompt`` (the loaded model is ``prompt.model``).

        For each token: run the model, call ``step(logits)`` to get the token
        id, yield a ``TokenPiece`` with the newly complete text. (A
        self-sampling backend gets a ``SamplingParams`` as ``step`` instead,
        samples with its parameters itself and yields a piece per text delta
        of its engine; see ``exposes_logits``.) Yield a
        piece with ``finish_reason=STOP`` (and ``text=""``) for end of
        sequence, or ``LENGTH`` after ``max_tokens`` pieces. Check
        ``cancelled`` before every forward pass and return when it is set.
        The kernel may also simply stop iterating (close the generator): a
        stop string was found or a limit reached. Blocking; runs in a
        worker thread.
        """

    # -- optional ability: embeddings -------------------------------------------
    #
    # A backend that can turn inputs into vectors overrides these three; the
    # kernel serves ``kernel.embed`` (OpenAI ``/v1/embeddings``) with
    # them: authenticate, resolve the model, ``prepare_embeddings`` (counted as
    # prompt tokens, checked against the context), reserve limits, then
    # ``embed`` on the engine queue like a generation, settled exactly once.

    def embedding_dimensions(self, model: ModelInfo) -> int | None:
        """The length of the vectors ``embed`` returns for ``model``, or None
        (the default) when this backend cannot embed with it: the kernel then
        refuses embedding requests for the model with 400, naming it. Quick;
        on the event loop."""
        return None

    def prepare_embeddings(self, inputs: Sequence[str] | Sequence[Sequence[int]],
                           model: ModelInfo) -> list[list[int]]:
        """The token ids ``embed`` will read for each input: texts tokenized by
        ``model``'s tokenizer (no chat template), token arrays checked (raise
        ``InvalidRequest`` naming ``input[i]`` for an id outside the
        vocabulary). Their lengths are the request's usage. Like ``prepare``:
        thread-safe, may run off the event loop, no weights."""
        raise NotImplementedError(f"backend '{self.name}' declares no embeddings")

    def embed(self, model: ModelInfo, inputs: list[list[int]],
              cancelled: threading.Event) -> list[np.ndarray]:
        """One float32 vector of ``embedding_dimensions(model)`` values per
        input, in order (``model`` is loaded). Document how tokens are pooled
        and whether vectors are normalised. Blocking; runs in an engine thread
        like ``generate``, so it must leave any state ``generate`` relies on
        (a KV cache, prefix reuse) consistent. Check ``cancelled`` between
        inputs and return early when it is set (the result is then
        discarded). Raise ``BackendError`` on failure."""
        raise NotImplementedError(f"backend '{self.name}' declares no embeddings")

    # -- optional ability: hidden states and steering -----------------------------
    #
    # A backend that can read a model's hidden states (the residual stream at
    # the output of each layer, 0-based) overrides ``hidden_layers`` and
    # ``hidden_states``; one that can also add vectors to them while
    # generating overrides ``steering_layers``. The kernel refuses a request
    # whose ``steering`` or ``observer`` the backend does not declare for its
    # model (400 naming the model), so neither is ever silently ignored; it
    # copies them to ``PreparedPrompt.steering`` / ``.observer`` for
    # ``generate``, which must honour both (see ``adyton.types.Steering`` and
    # ``HiddenStateObserver``), and must leave every other request's output
    # unchanged, even one running at the same time.

    def hidden_layers(self, model: ModelInfo) -> tuple[int, int] | None:
        """``(n_layers, hidden_size)`` when this backend can read ``model``'s
        hidden states (layers ``0 .. n_layers - 1``; ``hidden_states`` and a
        request's ``observer``), else None (the default). Quick; on the
        event loop."""
        return None

    def steering_layers(self, model: ModelInfo) -> Sequence[int] | None:
        """The layers a ``Steering`` vector may target for ``model``, or None
        (the default) when this backend cannot steer it. Quick."""
        return None

    def hidden_states(self, model: ModelInfo, inputs: list[list[int]], layers: Sequence[int],
                      cancelled: threading.Event) -> list[dict[int, np.ndarray]]:
        """For each input (token ids of ``model``, which is loaded), the hidden
        states at ``layers``: ``{layer: float32 array [n_tokens, hidden_size]}``,
        without steering. Blocking; runs in an engine thread like ``embed``
        (``kernel.hidden_states``), with the same duties."""
        raise NotImplementedError(f"backend '{self.name}' declares no hidden states")

    def close(self) -> None:
        """Free resources at shutdown."""


class WireFormat(ABC):
    """An HTTP surface with its own JSON shapes. Register with
    ``register_wire_formats``.

    The kernel mounts ``blueprint`` on the app. Any ``AdytonError`` raised by
    its routes (or by the pipeline they call), any HTTP error (bad JSON, body
    too large) and any unexpected exception is handed to ``render_error``, so
    clients of this surface only ever see its own error shape. Paths under
    ``url_prefixes`` that match no route get a 404 in this shape too.
    """

    name: str = ""
    url_prefixes: Sequence[str] = ()
    #: response headers this object (or its plugin's logits processors) adds,
    #: e.g. ``("x-ratelimit-remaining-requests",)``: browsers may read them
    #: (CORS; ``Kernel.exposed_headers``, docs/kernel.md)
    exposed_headers: Sequence[str] = ()
    #: the error statuses this surface's routes may answer, for the OpenAPI
    #: document: ``Kernel.complete_openapi`` adds each (with ``error_schema``)
    #: to every operation of this surface that does not document it itself
    error_statuses: Sequence[int] = (400, 401, 403, 404, 405, 413, 429, 500, 503)
    #: JSON schema of this surface's error body (None: not described)
    error_schema: ClassVar[dict[str, Any] | None] = None
    #: OpenAPI operation fields for routes this surface does not document
    #: otherwise: ``{"/api/chat": {"post": {"requestBody": ..., "responses":
    #: ...}}}`` (paths as OpenAPI writes them, ``{param}``); merged into the
    #: app's document by ``Kernel.complete_openapi``
    openapi_operations: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}

    @property
    @abstractmethod
    def blueprint(self) -> quart.Blueprint:
        """The routes of this surface."""

    @abstractmethod
    def render_error(self, error: AdytonError) -> quart.Response:
        """The response for ``error``: its ``status`` and
        ``error.response_headers()`` (Retry-After, rate-limit headers)."""

    def init_app(self, app: quart.Quart) -> None:
        """Called once when the blueprint is mounted, for extensions that
        need the app itself (e.g. quart-schema's OpenAPI document)."""

    def example_request(self, base_url: str) -> str | None:
        """A shell command that calls this surface (printed by ``adyton serve``)."""
        return None


class Authenticator(ABC):
    """Turns credentials into a principal. Register with
    ``register_authenticators``. With none registered, every request is
    anonymous; with some, a request none of them accepts gets 401."""

    name: str = ""
    #: response headers this object (or its plugin's logits processors) adds,
    #: e.g. ``("x-ratelimit-remaining-requests",)``: browsers may read them
    #: (CORS; ``Kernel.exposed_headers``, docs/kernel.md)
    exposed_headers: Sequence[str] = ()

    @abstractmethod
    async def authenticate(self, credentials: Credentials) -> Principal | None:
        """A Principal if these credentials are yours and valid; None if they
        are not your kind (the next authenticator is asked); raise
        ``Unauthorized`` (with a message saying what is wrong) if they are
        yours but invalid, unknown or disabled."""

    async def authorize(self, credentials: Credentials, access: str) -> Principal | None:
        """May ``credentials`` call a read-only route that needs ``access``
        (the ``[access]`` settings; see ``adyton.require_access``): "user"
        (any caller you accept), "metrics" (a metrics scraper) or "admin".
        Return a Principal if they are yours and grant it; None if they are
        not your kind (the next authenticator is asked); raise
        ``Unauthorized`` or ``Forbidden`` (saying what is missing) if they
        are yours but do not grant it. The default grants "user" to whatever
        ``authenticate`` accepts and nothing else."""
        if access == "user":
            return await self.authenticate(credentials)
        return None


class Limiter(ABC):
    """Admission control per principal. Register with ``register_limiters``.

    Every registered limiter must admit a request; if one refuses, those that
    already reserved are settled with zero usage. ``settle`` is called exactly
    once per successful ``reserve``: when the request finishes, fails, is
    cancelled, or is refused later in the path (``outcome`` says which)."""

    name: str = ""
    #: response headers this object (or its plugin's logits processors) adds,
    #: e.g. ``("x-ratelimit-remaining-requests",)``: browsers may read them
    #: (CORS; ``Kernel.exposed_headers``, docs/kernel.md)
    exposed_headers: Sequence[str] = ()

    @abstractmethod
    async def reserve(self, principal: Principal, cost: RequestCost) -> Reservation:
        """Reserve the worst case of ``cost`` or raise ``RateLimited`` (with
        ``retry_after``, and ``should_retry=False`` for a spent daily quota)."""

    @abstractmethod
    async def settle(self, reservation: Reservation, usage: Usage, outcome: str) -> None:
        """Replace the reservation with the real ``usage``. ``outcome`` is one
        of "ok", "cancelled", "error", "rejected" (never reached the engine)."""


class LogitsProcessor(ABC):
    """Changes the logits of one choice, token by token, before the sampler.

    Returned per request by the ``logits_processors`` hook. Runs on the
    engine's worker thread. ``reset`` is called before each choice (a request
    with ``n > 1`` reuses the processor)."""

    name: str = ""
    #: the request constraints this processor enforces; a constraint that no
    #: processor claims makes the kernel refuse the request (400)
    handles: Sequence[Constraint] = ()
    #: extra tokens this processor may use past ``max_tokens`` to complete its
    #: constraint (repair); the kernel stops there only once ``is_complete``
    extra_tokens: int = 0

    def reset(self) -> None:
        """Start a new choice."""

    @abstractmethod
    def process(self, generated: Sequence[int], logits: np.ndarray) -> None:
        """Modify ``logits`` in place (e.g. set forbidden tokens to -inf).
        ``generated`` holds this choice's tokens so far."""

    def accept(self, token_id: int) -> None:
        """The sampler chose ``token_id``; advance your state."""

    def is_complete(self) -> bool:
        """True when the output so far satisfies the constraint."""
        return True

    def response_headers(self) -> dict[str, str]:
        """Headers to add to the response (known before generation)."""
        return {}

    def report(self, text: str, finish_reason: FinishReason) -> dict[str, Any] | None:
        """After a choice ends: a report for the wire format (verifier results
        ...), keyed by your ``name`` in ``Choice.reports``."""
        return None


class Sampler(ABC):
    """Chooses a token from logits (after processors). Returned by the
    ``sampler`` hook; the kernel's ``adyton.sampling.DefaultSampler`` is the
    fallback."""

    #: False when ``adjust`` leaves the logits unchanged for this request and
    #: ``choose`` does not write to them: with no logits processor either, the
    #: chain then skips ``adjust`` and hands ``choose`` the backend's own
    #: logits array, uncopied (may be a property: DefaultSampler's is True
    #: only with a logit bias or a penalty)
    modifies_logits: bool = True

    @abstractmethod
    def reset(self, seed: int | None) -> None:
        """Start a new choice with this seed (None: unseeded)."""

    @abstractmethod
    def adjust(self, logits: np.ndarray) -> None:
        """Request-level adjustments in place (logit bias, penalties)."""

    @abstractmethod
    def choose(self, logits: np.ndarray) -> int:
        """The next token."""


# ==========================================================================
# Hooks
# ==========================================================================


@hookspec
def register_settings(register: Callable[[str, type], None]) -> None:
    """Declare your settings section.

    Call ``register("myfeature", MySettings)`` with a pydantic model whose
    fields all have defaults. It becomes the ``[myfeature]`` table of
    ``adyton.toml`` and the ``ADYTON_MYFEATURE__FIELD`` environment
    variables, validated at startup (an invalid value stops startup naming
    ``myfeature.field``). Read it with ``kernel.section("myfeature",
    MySettings)`` (docs/kernel.md).
    Catalog hook; synchronous."""


@hookspec
def register_backends(register: Callable[[Backend], None], kernel: Kernel) -> None:
    """Register ``Backend`` instances. Catalog hook; synchronous; called once
    per app, before startup. Do not load weights here."""


@hookspec
def register_wire_formats(register: Callable[[WireFormat], None], kernel: Kernel) -> None:
    """Register ``WireFormat`` instances (HTTP surfaces with their own JSON
    and error shapes). Catalog hook; synchronous."""


@hookspec
def register_authenticators(register: Callable[[Authenticator], None], kernel: Kernel) -> None:
    """Register ``Authenticator`` instances, asked in pluggy's call order
    (``tryfirst`` first); the first to return a Principal wins. Catalog hook;
    synchronous."""


@hookspec
def register_limiters(register: Callable[[Limiter], None], kernel: Kernel) -> None:
    """Register ``Limiter`` instances; all must admit a request, asked in
    pluggy's call order. Catalog hook; synchronous."""


@hookspec
def register_migrations(register: Callable[..., None], kernel: Kernel) -> None:
    """Declare the tables you keep in a SQL database:
    ``register(versions, version_table, database=None)`` — ``versions`` the
    directory of your Alembic revisions, ``version_table`` the table that
    records how far they ran (``alembic_version_<plugin>``: yours alone, so
    plugins migrate independently in one database), ``database`` an
    ``adyton.Database`` (None: ``kernel.database``, the ``[database] url``).
    The kernel brings each to its newest revision at startup, before any
    ``startup`` hook runs (a failure stops startup, naming the plugin), and
    ``adyton db upgrade`` does the same without serving. Collect-all;
    synchronous."""


@hookspec
def prepare_request(request: GenerationRequest, principal: Principal, kernel: Kernel) -> Awaitable[None] | None:
    """Per request, right after authentication: adjust ``request`` in place
    (expand a saved policy into constraints, apply per-principal defaults).

    ``request.extra`` holds extension parameters a wire format accepted but
    does not understand itself (e.g. an Axionic ``policy``). A plugin that
    handles one must ``pop`` it; anything left in ``extra`` afterwards makes
    the kernel refuse the request with 400 ("no installed plugin handles
    'policy'"), so no parameter is ever silently ignored. Raise
    ``InvalidRequest`` for bad values. Collect-all; may be async."""


@hookspec
def logits_processors(
    request: GenerationRequest,
    model: ModelInfo,
    vocabulary: Vocabulary | None,
    kernel: Kernel,
) -> LogitsProcessor | Sequence[LogitsProcessor] | Awaitable[Any] | None:
    """Per request, before it is queued: return the logits processors this
    request needs from you (or None). Claim the request's constraints you
    enforce through ``LogitsProcessor.handles``; raise
    ``UnsupportedConstraint`` for one of yours that does not compile — the
    request is then refused with 400 before it is counted or queued.
    ``vocabulary`` is None when the backend cannot describe its tokens.
    Collect-all; may be async (return an awaitable; run slow compiles off
    the loop)."""


@hookspec(firstresult=True)
def sampler(request: GenerationRequest, kernel: Kernel) -> Sampler | None:
    """Per request: the Sampler that picks tokens. First non-None wins; the
    kernel's DefaultSampler is registered last. Pick-one; synchronous."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add ``click`` commands or groups to the ``adyton`` CLI. Commands that
    need the server's state take ``@click.pass_obj`` and call ``.kernel()``
    on it (settings loaded, plugins registered, nothing served).
    Catalog hook (``cli`` is the register point); synchronous."""


@hookspec
def startup(kernel: Kernel) -> Awaitable[None] | None:
    """The app is about to serve: open databases, connect to Redis. Failing
    here stops startup naming your plugin. Collect-all, in pluggy's call
    order; may be async."""


@hookspec
def shutdown(kernel: Kernel) -> Awaitable[None] | None:
    """The app stopped serving (in-flight requests have been settled):
    close what ``startup`` opened. Collect-all, in the reverse of the
    ``startup`` order; may be async."""
