"""The ``upstream`` backend: models served by remote OpenAI-compatible
engines, reached with httpx.

Thread model: the kernel runs ``generate`` on an engine thread, a blocking
iterator. The backend declares ``max_concurrency`` (default 64) so each
request in flight holds one engine thread, and streams with httpx's *sync*
client (one shared, thread-safe connection pool) on that thread: the
kernel's queue, deadlines, cancellation and settlement apply unchanged, and
adding an async contract to the kernel for one backend is not needed for
I/O-bound threads that spend their time blocked in ``recv``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx

from adyton import (
    AdytonError,
    Backend,
    BadGateway,
    FinishReason,
    GatewayTimeout,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    ModelNotFound,
    PreparedPrompt,
    RateLimited,
    SamplingParams,
    ServiceUnavailable,
    StepFunction,
    TokenLogprob,
    TokenPiece,
    TopLogprob,
    Usage,
)

from . import mapping
from .pool import Replica, ReplicaPool
from .settings import UpstreamModel, UpstreamSettings

log = logging.getLogger("adyton.upstream")

_FINISH = {"stop": FinishReason.STOP, "eos": FinishReason.STOP, "length": FinishReason.LENGTH,
           "content_filter": FinishReason.STOP}


class _ReplicaFailed(Exception):
    """A replica failed before the request's first token: try another."""

    def __init__(self, error: AdytonError, unreachable: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.unreachable = unreachable


class _Hangups:
    """Closes the upstream connection of a request whose client left, also
    while its engine thread is blocked reading it (an engine that queues or
    prefills sends nothing meanwhile): one watcher thread polls the requests
    in flight every ``interval_s`` and shuts the socket of a cancelled one,
    which ends the blocked read at once. The thread runs only while there
    are requests to watch."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._watched: dict[int, tuple[threading.Event, httpx.Response]] = {}
        self._lock = threading.Lock()
        self._running = False

    def watch(self, cancelled: threading.Event, response: httpx.Response) -> int:
        key = id(response)
        with self._lock:
            self._watched[key] = (cancelled, response)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="adyton-upstream-hangups", daemon=True).start()
        return key

    def forget(self, key: int) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._running = False
                    return
                hung_up = [k for k, (cancelled, _) in self._watched.items() if cancelled.is_set()]
                responses = [self._watched.pop(k)[1] for k in hung_up]
            for response in responses:
                _shut(response)
            time.sleep(self.interval_s)


def _shut(response: httpx.Response) -> None:
    """Shut the connection under ``response``: a blocked read ends at once,
    and the pool drops the connection instead of reusing it."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class UpstreamBackend(Backend):
    name = "upstream"
    exposes_logits = False

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.max_concurrency = settings.max_concurrency
        self.pool = ReplicaPool(backoff_s=settings.backoff_s, max_backoff_s=settings.max_backoff_s)
        for model_id, spec in settings.models.items():
            for replica in spec.replicas:
                self.pool.add(Replica(model_id, replica.url, replica.api_key or spec.api_key))
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._loaded: str | None = None
        self._stop = threading.Event()
        self._health: threading.Thread | None = None
        #: counters for /metrics: (model, replica url, kind) -> count
        self.errors: dict[tuple[str, str, str], int] = {}
        self.retries: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._hangups = _Hangups()

    # -- catalog ------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=model_id, owned_by=spec.owned_by, aliases=list(spec.aliases))
                for model_id, spec in self.settings.models.items()]

    def loaded_model(self) -> str | None:
        return self._loaded

    def load_model(self, model_id: str) -> None:
        """Nothing to load: the engines hold the weights. Remembers the model
        last used (what a request naming no model gets)."""
        if model_id not in self.settings.models:
            raise ModelNotFound(f"The model '{model_id}' is not served upstream", param="model")
        self._loaded = model_id

    def _spec(self, model: ModelInfo) -> UpstreamModel:
        return self.settings.models[model.id]

    # -- admission ----------------------------------------------------------------

    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        """No tokenizer here: the prompt is counted as an upper bound (its
        UTF-8 bytes, plus 8 per message for the chat template) for the limits
        reservation; the engine's own count settles it. The context is the
        engine's to check (its 400 is passed on)."""
        self.pool.check_available(model.id)  # every replica out: 503 before anything is counted
        if request.messages is not None:
            text = "\n".join(f"{m.role}: {m.content}" for m in request.messages)
            n = len(text.encode()) + 8 * len(request.messages) + 8
        else:
            text = request.prompt or ""
            n = max(1, len(text.encode()))
        room = max(request.max_tokens or 0, self.settings.default_max_tokens)
        return PreparedPrompt(model=model, token_ids=[0] * n, text=text, context_length=n + room)

    def check_sampling(self, request: GenerationRequest, model: ModelInfo) -> None:
        mapping.check(request, self._spec(model), model.id)

    # -- generation ------------------------------------------------------------------

    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                s = self.settings
                self._client = httpx.Client(
                    timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=s.max_concurrency),
                    trust_env=False,
                )
            return self._client

    def generate(self, prompt: PreparedPrompt, step: StepFunction, max_tokens: int,
                 cancelled: threading.Event) -> Iterator[TokenPiece]:
        """Stream one choice from the least busy replica. A replica that
        fails before the first token is taken out and the request tried on
        another (``max_attempts``); after the first token a failure ends the
        choice with 502/504. Constrained output is buffered and verified
        before any of it is yielded."""
        if not isinstance(step, SamplingParams):  # exposes_logits = False: the kernel hands the request
            raise TypeError("adyton-upstream samples upstream: Backend.generate needs SamplingParams as step")
        request = step.request
        model_id = prompt.model.id
        spec = self._spec(prompt.model)
        # a cap the client chose goes upstream; a server-side one (no max_tokens,
        # or fit_context) is the engine's to fit to its context, and ours to enforce
        capped_upstream = request.max_tokens is not None and not request.fit_context
        path, payload = mapping.body(request, spec, model_id, step.seed, max_tokens if capped_upstream else None)
        constraint = request.constraints[0] if request.constraints else None
        tried: set[int] = set()
        failures: list[_ReplicaFailed] = []
        for _ in range(self.settings.max_attempts):
            if cancelled.is_set():
                return
            replica = self.pool.acquire(model_id, tried)
            if replica is None:
                break
            if tried:
                self._count(self.retries, model_id)
            tried.add(id(replica))
            try:
                pieces = self._stream(replica, path, payload, request, model_id,
                                      None if capped_upstream else max_tokens, cancelled, prompt.n_tokens)
                if constraint is None:
                    yield from pieces
                    return
                buffered = list(pieces)  # fail closed: nothing leaves before it is verified
            except _ReplicaFailed as failed:  # (raised before the first piece only)
                self.pool.failed(replica, failed.error.message)
                self._count(self.errors, (model_id, replica.url, failed.error.code or "error"))
                log.warning("replica %s of model %s failed: %s", replica.url, model_id, failed.error.message)
                failures.append(failed)
                continue
            except (BadGateway, GatewayTimeout) as exc:  # after the first token
                self.pool.failed(replica, exc.message)
                self._count(self.errors, (model_id, replica.url, exc.code or "error"))
                raise
            finally:
                self.pool.release(replica)
            # (outside: output that fails verification is not the replica's failure)
            yield self._verified(buffered, constraint, model_id, cancelled)
            return
        if failures and not all(f.unreachable for f in failures):
            raise failures[-1].error  # answered, but badly: 502 / 504
        self.pool.check_available(model_id)  # none reachable and all out now: 503 with Retry-After
        last = failures[-1].error.message if failures else "none was free"
        raise ServiceUnavailable(f"no replica of model '{model_id}' could be reached ({last})",
                                 code="upstream_unavailable", retry_after=1)

    def _verified(self, pieces: list[TokenPiece], constraint: Any, model_id: str,
                  cancelled: threading.Event) -> TokenPiece:
        """The whole buffered choice as one piece, if it satisfies ``constraint``."""
        text = "".join(p.text for p in pieces)
        last = pieces[-1] if pieces else TokenPiece(-1, "", FinishReason.STOP)
        finish = last.finish_reason or FinishReason.STOP
        if cancelled.is_set():
            return TokenPiece(-1, "", FinishReason.STOP)
        why = mapping.verify(constraint, text)
        if why is not None:
            what = "cut at max_tokens and " if finish is FinishReason.LENGTH else ""
            raise BadGateway(f"the output of model '{model_id}' {what}failed verification against its "
                             f"{constraint.kind} constraint from '{constraint.source}': {why}; it was "
                             f"not passed on", code="verification_failed")
        logprobs = [lp for p in pieces for lp in (p.logprobs or ())] or None
        verifiers = {"syntax": {"passed": True}}
        if constraint.kind == "json_schema":
            verifiers["json_schema"] = {"passed": True}
        # (the shape of adyton-guided's report, so its surfaces show it the same way)
        report = {"enforced": True, "enforced_by": "upstream", "constraint": constraint.kind,
                  "source": constraint.source, "accepted": True, "complete": True, "verifiers": verifiers}
        return TokenPiece(_piece_id(text), text, finish, logprobs=logprobs, usage=last.usage,
                          reports={"guided": report})

    def _stream(self, replica: Replica, path: str, payload: dict[str, Any], request: GenerationRequest,
                model_id: str, cap: int | None, cancelled: threading.Event,
                prompt_estimate: int) -> Iterator[TokenPiece]:
        """Pieces from one replica (at most ``cap`` when the engine was not
        told a max_tokens). Raises ``_ReplicaFailed`` for a failure
        before the first piece, ``BadGateway``/``GatewayTimeout`` after it,
        and passes on the engine's own refusals (400, 429).

        The last piece carries the usage: the engine's own when it sent one
        (``stream_options.include_usage``), else what was seen here — the
        pieces delivered as completion tokens (an engine streams one token
        per chunk: llama-cpp-python's server, which sends no usage in a
        stream, joins only the tokens of one multi-byte character) and
        ``prompt_estimate`` (the reservation's count) for the prompt."""
        chat = request.messages is not None
        want_logprobs = request.logprobs is not None
        delivered = 0
        events = 0
        finish: FinishReason | None = None
        usage: Usage | None = None
        done = False
        watch: int | None = None
        try:
            with self.client().stream("POST", replica.url + path, json=payload,
                                      headers=replica.headers()) as response:
                if response.status_code != 200:
                    raise self._refusal(response, replica, model_id)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # an engine (or a proxy before it) that does not stream: one piece
                    piece = _whole(response, chat, want_logprobs, model_id, replica)
                    self.pool.succeeded(replica)
                    yield piece
                    return
                watch = self._hangups.watch(cancelled, response)
                lines = response.iter_lines()
                for line in lines:
                    if cancelled.is_set():
                        return  # (closing the response closes the connection: the engine stops)
                    try:
                        chunk = _sse_data(line)
                    except ValueError as exc:
                        raise _garbage(model_id, replica, str(exc)) from None
                    if chunk is None:
                        continue
                    replica.last_data = time.monotonic()  # (alive, for a health check it keeps waiting)
                    events += 1
                    if chunk is _DONE:  # (read on to the end: the connection goes back to the pool)
                        done = True
                        continue
                    if done:
                        continue
                    if not isinstance(chunk, dict):
                        raise _garbage(model_id, replica, f"an event that is not a JSON object: {line[:80]!r}")
                    if "error" in chunk:
                        message = _error_message(chunk)
                        raise BadGateway(f"the upstream of model '{model_id}' ({replica.url}) reported an "
                                         f"error mid-stream: {message}")
                    if isinstance(chunk.get("usage"), dict):
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or ():
                        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                            continue
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        logprobs = _logprobs(choice.get("logprobs"), chat) if want_logprobs else None
                        if text or logprobs:
                            delivered += 1
                            yield TokenPiece(_piece_id(text or ""), text or "", logprobs=logprobs)
                            if cap is not None and delivered >= cap and finish is None:
                                # the server-side cap: stop the engine here
                                yield TokenPiece(-1, "", FinishReason.LENGTH,
                                                 usage=self._seen(replica, usage, prompt_estimate, delivered))
                                return
                        reason = choice.get("finish_reason")
                        if reason:
                            finish = _FINISH.get(reason)
                            if finish is None:
                                raise BadGateway(f"the upstream of model '{model_id}' ({replica.url}) "
                                                 f"ended the choice with finish_reason {reason!r}")
                if cancelled.is_set():
                    return  # (we hung up: the read ended at the shut connection)
                if not events:
                    # a stream ended cleanly with no event at all: llama-cpp-python's server
                    # does that for a request it refuses once its stream has begun (a prompt
                    # past its context), and then closes the connection: not one to reuse.
                    # Asked again without streaming, it says why.
                    _shut(response)
                    piece = self._unstreamed(replica, path, payload, chat, want_logprobs, model_id, cancelled)
                    self.pool.succeeded(replica)
                    yield piece
                    return
                if finish is None:
                    # ([DONE] without a finish_reason: the engine gave up on the choice, e.g.
                    # llama-cpp-python's server interrupting a stream for the next request)
                    how = "ended its stream with [DONE] but no finish_reason" if done else "cut its stream"
                    raise BadGateway(f"the upstream of model '{model_id}' ({replica.url}) {how} "
                                     f"after {delivered} pieces")
        except httpx.TimeoutException as exc:
            if cancelled.is_set():
                return  # (the client left: not the replica's failure)
            error: AdytonError = GatewayTimeout(f"the upstream of model '{model_id}' ({replica.url}) "
                                                f"did not answer in time ({type(exc).__name__})")
            if delivered:
                raise error from None
            raise _ReplicaFailed(error) from None
        except httpx.ConnectError as exc:
            raise _ReplicaFailed(BadGateway(f"cannot connect to the upstream of model '{model_id}' "
                                            f"({replica.url}): {exc}"), unreachable=True) from None
        except httpx.TransportError as exc:  # reset, protocol error ...
            if cancelled.is_set():
                return  # (we hung up: the client left)
            error = BadGateway(f"the upstream of model '{model_id}' ({replica.url}) cut the connection "
                               f"after {delivered} pieces: {type(exc).__name__}: {exc}")
            if delivered:
                raise error from None
            raise _ReplicaFailed(error) from None
        except BadGateway as exc:
            if cancelled.is_set():
                return  # (we hung up: the client left)
            if delivered:
                raise
            raise _ReplicaFailed(exc) from None
        finally:
            if watch is not None:
                self._hangups.forget(watch)
        if not delivered and finish is None:
            raise _ReplicaFailed(BadGateway(f"the upstream of model '{model_id}' ({replica.url}) "
                                            f"answered with no choice"))
        self.pool.succeeded(replica)
        yield TokenPiece(-1, "", finish or FinishReason.STOP,
                         usage=self._seen(replica, usage, prompt_estimate, delivered))

    def _unstreamed(self, replica: Replica, path: str, payload: dict[str, Any], chat: bool, want_logprobs: bool,
                    model_id: str, cancelled: threading.Event) -> TokenPiece:
        """The request once more, not streamed: the engine's refusal (400
        passed on, 5xx the replica's failure) or its whole answer as one piece."""
        body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        with self.client().stream("POST", replica.url + path, json=body, headers=replica.headers()) as response:
            if response.status_code != 200:
                raise self._refusal(response, replica, model_id)
            watch = self._hangups.watch(cancelled, response)
            try:
                return _whole(response, chat, want_logprobs, model_id, replica)
            finally:
                self._hangups.forget(watch)

    def _seen(self, replica: Replica, usage: Usage | None, prompt_estimate: int, delivered: int) -> Usage:
        """The engine's usage, or the count seen here when it sent none. It
        rides on the last piece because the kernel's own count of pieces is
        not the token count when a constrained choice is verified and passed
        on as one piece (``_verified``)."""
        if usage is not None:
            return usage
        if not replica.warned_no_usage:
            replica.warned_no_usage = True
            log.info("replica %s of model %s streams no usage (stream_options.include_usage): its "
                     "completion tokens are counted as the chunks it sends, its prompt at adyton's "
                     "estimate", replica.url, replica.model)
        return Usage(prompt_tokens=prompt_estimate, completion_tokens=delivered)

    def _refusal(self, response: httpx.Response, replica: Replica, model_id: str) -> Exception:
        """A non-200 answer: the caller's fault (400, 413, 422) and the
        engine's 429 are passed on; anything else is the replica's failure."""
        status = response.status_code
        try:
            response.read()
        except httpx.HTTPError:
            message = "(the body could not be read)"
        else:
            try:
                message = _error_message(response.json())
            except ValueError:  # not JSON
                message = response.text[:200]
        where = f"the upstream of model '{model_id}'"
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            return RateLimited(f"{where} is rate limited: {message}", retry_after=retry_after,
                               code="upstream_rate_limited")
        if status in (400, 413, 422):
            return InvalidRequest(f"{where} refused the request: {message}", code="upstream_refused")
        error = BadGateway(f"{where} ({replica.url}) answered HTTP {status}: {message}")
        return _ReplicaFailed(error)

    # -- health ----------------------------------------------------------------------

    def check_health(self) -> None:
        """One round: GET ``health_path`` on every replica; a failing one is
        taken out, a healthy one put back (also before its back-off ends).

        A check that times out while the replica is streaming to us (data
        within ``read_timeout_s``) is no verdict: an engine that runs one
        request at a time answers its routes in turn (llama-cpp-python's
        server: ``/v1/models`` waits for the generation running and those
        queued), and the streams' own read timeout catches one that hangs."""
        for replicas in self.pool.replicas.values():
            for replica in replicas:
                if self._stop.is_set():
                    return
                try:
                    r = self.client().get(replica.url + self.settings.health_path, headers=replica.headers(),
                                          timeout=self.settings.connect_timeout_s)
                    ok, why = r.status_code == 200, f"health check: HTTP {r.status_code}"
                except httpx.TimeoutException as exc:
                    if replica.outstanding and time.monotonic() - replica.last_data < self.settings.read_timeout_s:
                        log.debug("replica %s of model %s is busy streaming: health check skipped",
                                  replica.url, replica.model)
                        continue
                    ok, why = False, f"health check: {type(exc).__name__}: {exc}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"health check: {type(exc).__name__}: {exc}"
                if ok:
                    if not replica.up or replica.failures:
                        log.info("replica %s of model %s is back in service", replica.url, replica.model)
                    self.pool.succeeded(replica)
                elif replica.up:
                    log.warning("replica %s of model %s is out of service: %s", replica.url, replica.model, why)
                    self.pool.failed(replica, why)
                else:
                    replica.last_error = why

    def start_health_checks(self) -> None:
        if self._health is not None or not self.settings.models:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.check_health()
                except Exception:  # keep checking
                    log.exception("upstream health check failed")
                self._stop.wait(self.settings.health_interval_s)

        self._health = threading.Thread(target=run, name="adyton-upstream-health", daemon=True)
        self._health.start()

    def _count(self, counter: dict[Any, int], key: Any) -> None:
        with self._count_lock:
            counter[key] = counter.get(key, 0) + 1

    def close(self) -> None:
        self._stop.set()
        if self._health is not None:
            self._health.join(timeout=self.settings.connect_timeout_s + 1)
            self._health = None
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# -- the wire, upstream ---------------------------------------------------------------

_DONE = object()


def _sse_data(line: str) -> Any:
    """The JSON of a ``data:`` line, ``_DONE`` for ``[DONE]``, None for what
    carries no data (comments, keep-alives, blank lines, other fields)."""
    if not line or line.startswith(":"):
        return None
    field, _, value = line.partition(":")
    if field != "data":
        if field in ("event", "id", "retry"):
            return None
        raise ValueError(f"garbage instead of an event stream: {line[:80]!r}")
    value = value.strip()
    if value == "[DONE]":
        return _DONE
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError(f"an event that is not JSON: {value[:80]!r}") from None


def _whole(response: httpx.Response, chat: bool, want_logprobs: bool, model_id: str,
           replica: Replica) -> TokenPiece:
    """A non-streaming completion object as one final piece (or BadGateway)."""
    try:
        body = json.loads(response.read())
        choice = body["choices"][0]
        text = choice["message"].get("content") if chat else choice["text"]
        finish = _FINISH[choice.get("finish_reason") or "stop"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _garbage(model_id, replica, "a JSON answer that is not a completion") from None
    usage = _usage(body["usage"]) if isinstance(body.get("usage"), dict) else None
    logprobs = _logprobs(choice.get("logprobs"), chat) if want_logprobs else None
    return TokenPiece(_piece_id(text or ""), text or "", finish, logprobs=logprobs, usage=usage)


def _garbage(model_id: str, replica: Replica, what: str) -> BadGateway:
    return BadGateway(f"the upstream of model '{model_id}' ({replica.url}) sent {what}")


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
        if "message" in body:
            return str(body["message"])
    return str(body)[:200]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _usage(raw: dict[str, Any]) -> Usage | None:
    try:
        return Usage(prompt_tokens=int(raw.get("prompt_tokens") or 0),
                     completion_tokens=int(raw.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def _piece_id(text: str) -> int:
    """A stable id for a piece's text: the kernel's repetition guard looks
    for loops of ids, and an engine's pieces have none of their own here."""
    return zlib.crc32(text.encode())


def _logprobs(raw: Any, chat: bool) -> list[TokenLogprob] | None:
    """OpenAI logprobs of one chunk: chat (``content: [{token, logprob,
    bytes, top_logprobs}]``) or legacy completions (``tokens``,
    ``token_logprobs``, ``top_logprobs: [{token: logprob}]``)."""
    if not isinstance(raw, dict):
        return None
    out: list[TokenLogprob] = []
    if chat:
        for item in raw.get("content") or ():
            tops = [TopLogprob(t.get("token", ""), float(t.get("logprob", 0.0)),
                               list(t.get("bytes") or t.get("token", "").encode()))
                    for t in item.get("top_logprobs") or ()]
            token = item.get("token", "")
            out.append(TokenLogprob(token, float(item.get("logprob", 0.0)),
                                    list(item.get("bytes") or token.encode()), tops))
        return out or None
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or []
    tops_raw = raw.get("top_logprobs") or []
    for i, token in enumerate(tokens):
        tops = [TopLogprob(t, float(v), list(t.encode()))
                for t, v in ((tops_raw[i] or {}).items() if i < len(tops_raw) else ())]
        value = values[i] if i < len(values) and values[i] is not None else 0.0
        out.append(TokenLogprob(token, float(value), list(token.encode()), tops))
    return out or None
