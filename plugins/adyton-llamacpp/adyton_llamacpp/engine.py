"""llama.cpp through llama-cpp-python's low-level API, with continuous batching.

``GGUFVocab`` is a model file opened vocabulary-only (cheap: no weights): its
tokenizer, token texts, chat template source and metadata. ``prepare`` and
the catalog use it, for any model, loaded or not.

``BatchEngine`` holds one model's weights and one ``llama_context`` with
``slots`` sequences, each with its own KV stream of ``slot_context`` tokens
(``kv_unified=False``: a sequence's attention never sees another's cells,
so its numbers do not depend on who shares the batch). One batch thread
owns the context. Each step it calls ``llama_decode`` once, with one token
for every sequence whose consumer handed back its next token, plus chunks of
the prompts of joining sequences (at most ``prefill_chunk`` prompt tokens a
step, so a long prompt does not freeze the others), and hands each sequence
the logits of its last position.

The batch thread never samples: a sequence's consumer (the engine thread
running ``Backend.generate`` for its request) waits for its logits, runs the
kernel's sampler chain on them and pushes the chosen token, which the next
step decodes. So a sequence advances in lock-step with its consumer, and a
slow consumer only costs itself a step: the batch thread waits at most
``CONSUMER_GRACE_S`` for stragglers before decoding without them.

Prefix reuse: a slot keeps the tokens in its KV cache after its sequence
ends; a new sequence takes the free slot sharing the longest prefix with its
prompt and only prefills the rest.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L
import numpy as np

log = logging.getLogger("adyton.llamacpp")

#: how long the batch thread waits for consumers still sampling their last
#: token before it decodes the sequences that are ready
CONSUMER_GRACE_S = 0.02
#: how often a waiting consumer looks at its request's ``cancelled`` event
CANCEL_POLL_S = 0.05
#: steps of fewer tokens run on one thread (see ``BatchEngine._decode``)
SMALL_STEP_TOKENS = 4


class EngineError(Exception):
    """llama.cpp refused a file or failed a call; the message says why."""


# -- llama.cpp's log: to Python logging, and the last errors kept as reasons ---------

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_errors = threading.local()
_llama_log = logging.getLogger("adyton.llamacpp.llama_cpp")
_last_level = [logging.DEBUG]


@L.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    py_level = _LEVELS.get(level, _last_level[0])  # 5 = continuation of the previous line
    _last_level[0] = py_level
    message = text.decode("utf-8", errors="replace").rstrip()
    if py_level >= logging.ERROR:
        recent = getattr(_errors, "lines", None)
        if recent is not None:
            recent.append(message)
    if message and _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug("%s", message)


_backend_ready = False
_init_lock = threading.Lock()


def _init() -> None:
    global _backend_ready
    with _init_lock:
        if not _backend_ready:
            L.llama_log_set(_log_callback, ctypes.c_void_p(0))
            L.llama_backend_init()
            _backend_ready = True


class _ErrorLines:
    """Collect llama.cpp's error lines logged on this thread meanwhile."""

    def __enter__(self) -> _ErrorLines:
        self.lines: collections.deque[str] = collections.deque(maxlen=8)
        _errors.lines = self.lines
        return self

    def __exit__(self, *exc: Any) -> None:
        _errors.lines = None

    def reason(self, default: str) -> str:
        """The first specific error line, without its function-name prefix."""
        for line in self.lines:
            text = line.split(": ", 1)[-1].strip()
            text = text.removeprefix("error loading model: ").strip()
            if text and "failed to load model" not in text:
                return text
        return default


def _load_model(path: str, *, vocab_only: bool) -> Any:
    _init()
    params = L.llama_model_default_params()
    params.vocab_only = vocab_only
    with _ErrorLines() as errors:
        model = L.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise EngineError(errors.reason("llama.cpp cannot load it"))
    return model


# -- the vocabulary of one model file ---------------------------------------------------

_FTYPES = {getattr(L, n): n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(L) if n.startswith("LLAMA_FTYPE_MOSTLY_")}
_FTYPES.update({0: "F32", 1: "F16"})


class GGUFVocab:
    """A GGUF opened without its weights: tokenizer and metadata. Thread-safe
    for reading (llama.cpp's tokenizer is const)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._model = _load_model(path, vocab_only=True)
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = int(L.llama_vocab_bos(self._vocab))
        self.eos_id = int(L.llama_vocab_eos(self._vocab))
        self.architecture = self.meta("general.architecture") or ""
        ctx = self.meta(f"{self.architecture}.context_length")
        self.context_length = int(ctx) if ctx and ctx.isdigit() else None
        ftype = self.meta("general.file_type")
        self.quantization = _FTYPES.get(int(ftype)) if ftype and ftype.isdigit() else None
        embd = self.meta(f"{self.architecture}.embedding_length")
        self.embedding_length = int(embd) if embd and embd.isdigit() else None
        template = L.llama_model_chat_template(self._model, None)
        self.chat_template = template.decode("utf-8", errors="replace") if template else None
        self._token_bytes: list[bytes] | None = None
        self._lock = threading.Lock()

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1024)
        n = L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, parse_special: bool, add_bos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            buf = (L.llama_token * size)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, size, add_bos, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def token_piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (control tokens: their text)."""
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def token_bytes(self) -> list[bytes]:
        with self._lock:
            if self._token_bytes is None:
                self._token_bytes = [self.token_piece(i) for i in range(self.n_vocab)]
            return self._token_bytes

    def text(self, token: int) -> str:
        if not 0 <= token < self.n_vocab:
            return ""
        return L.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def is_control(self, token: int) -> bool:
        return bool(L.llama_vocab_get_attr(self._vocab, token) & L.LLAMA_TOKEN_ATTR_CONTROL)

    def control_tokens(self) -> list[int]:
        return [i for i in range(self.n_vocab) if self.is_control(i)]

    def is_eog(self, token: int) -> bool:
        return 0 <= token < self.n_vocab and bool(L.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if self._model:
            L.llama_model_free(self._model)
            self._model = None


# -- sequences and slots -------------------------------------------------------------------

_PREFILL, _QUEUED, _IN_FLIGHT, _SAMPLING, _FAILED = "prefill", "queued", "in_flight", "sampling", "failed"


@dataclass(eq=False)
class _Slot:
    seq_id: int
    #: the tokens in this sequence's KV cache, position by position
    history: list[int] = field(default_factory=list)
    seq: Sequence | None = None
    last_used: int = 0


class Sequence:
    """One generation's place in the batch. Its consumer calls
    ``next_logits`` and ``push`` in turn, and ``release`` at the end."""

    def __init__(self, engine: BatchEngine, slot: _Slot, prompt: list[int], keep: int) -> None:
        self.engine = engine
        self.slot = slot
        self.prompt = prompt
        #: prompt tokens already in the KV cache (prefix reuse)
        self.reused = keep
        self.keep = keep
        self.next_prompt = keep  #: index of the next prompt token to prefill
        self.state = _PREFILL
        self.pending: int | None = None  #: the token to decode next
        self.logits: np.ndarray | None = None
        self.error: str | None = None
        self.released = False
        self.trimmed = False  #: the slot's cache was cut back to ``keep``
        #: set by the batch thread when this sequence's logits (or failure) are in
        self.ready = threading.Event()

    # -- consumer side ----------------------------------------------------------

    def next_logits(self, cancelled: threading.Event) -> np.ndarray | None:
        """The logits of the next position, or None once ``cancelled`` is
        set. Raises ``EngineError`` if llama.cpp failed this sequence."""
        engine = self.engine
        while True:
            with engine._lock:
                if cancelled.is_set() or engine._closing:
                    return None
                if self.state == _SAMPLING:
                    logits, self.logits = self.logits, None
                    return logits
                if self.state == _FAILED:
                    raise EngineError(self.error or "llama.cpp failed")
                self.ready.clear()
            self.ready.wait(CANCEL_POLL_S)

    def push(self, token: int) -> None:
        """Decode ``token`` next (the consumer sampled it)."""
        engine = self.engine
        with engine._lock:
            self.pending = token
            self.state = _QUEUED
            # wake the batch thread once the last sampling consumer is back
            if not any(s.state == _SAMPLING for s in engine._active):
                engine._work.notify()

    def release(self) -> None:
        """The consumer is done; the slot is freed at once, or when the step
        carrying this sequence's last token ends."""
        self.engine._release(self)


class BatchEngine:
    """One model in memory, ``slots`` sequences decoded together."""

    def __init__(self, path: str, *, slots: int, slot_context: int, threads: int,
                 prefill_chunk: int) -> None:
        self.path = path
        self.slots_n = slots
        self.slot_context = slot_context
        self.prefill_chunk = prefill_chunk
        self.threads = threads
        self._embed_lock = threading.Lock()
        self._embed_ctx: Any = None
        self._embed_batch: Any = None
        self._model = _load_model(path, vocab_only=False)
        params = L.llama_context_default_params()
        params.n_ctx = slot_context * slots
        params.n_seq_max = slots
        params.kv_unified = False  # one KV stream per sequence: batch-invariant numerics
        self.n_batch = prefill_chunk + slots
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_threads = params.n_threads_batch = threads
        with _ErrorLines() as errors:
            self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise EngineError(errors.reason("llama.cpp could not create a context"))
        self._mem = L.llama_get_memory(self._ctx)
        self._threads_now = threads
        # a sliding-window cache (Gemma 3 ...) forgets early positions of a long
        # sequence, which a reused prefix would still need: no reuse there
        self.reuse_prefix = int(L.llama_model_n_swa(self._model)) == 0
        vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(i) for i in range(slots)]
        self._active: list[Sequence] = []
        self._lock = threading.Lock()
        #: the batch thread waits here for work; ``submit`` for a free slot
        self._work = threading.Condition(self._lock)
        self._slot_freed = threading.Condition(self._lock)
        self._closing = False
        self._uses = 0
        #: counters for tests and benchmarks
        self.reused_tokens = 0  #: prompt tokens taken from a slot's cache
        self.steps = 0
        #: recent (step, "join" | "leave", slot) events
        self.log: collections.deque[tuple[int, str, int]] = collections.deque(maxlen=256)
        self.max_batch_seqs = 0
        self._thread = threading.Thread(target=self._run, name="adyton-llamacpp-batch", daemon=True)
        self._thread.start()

    # -- consumers ---------------------------------------------------------------------

    def submit(self, prompt: list[int]) -> Sequence:
        """A sequence for ``prompt`` in the free slot sharing the longest
        prefix with it. Blocks while every slot is taken."""
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) > self.slot_context:
            raise EngineError(f"the prompt is {len(prompt)} tokens; a slot holds {self.slot_context}")
        with self._lock:
            while True:
                if self._closing:
                    raise EngineError("the engine is shutting down")
                free = [s for s in self._slots if s.seq is None]
                if free:
                    break
                self._slot_freed.wait()
            # the longest shared prefix wins; among equals, the least recently used slot
            slot = max(free, key=lambda s: (_common_prefix(s.history, prompt), -s.last_used))
            keep = min(_common_prefix(slot.history, prompt), len(prompt) - 1) if self.reuse_prefix else 0
            seq = Sequence(self, slot, list(prompt), keep)
            slot.seq = seq
            self._uses += 1
            slot.last_used = self._uses
            self._active.append(seq)
            self.log.append((self.steps, "join", slot.seq_id))
            self._work.notify()
            return seq

    def _release(self, seq: Sequence) -> None:
        with self._lock:
            seq.released = True
            if seq.state != _IN_FLIGHT:
                self._free(seq)
            self._work.notify()

    def _free(self, seq: Sequence) -> None:
        """(Under the lock.) Give the slot back."""
        if seq in self._active:
            self._active.remove(seq)
            self.log.append((self.steps, "leave", seq.slot.seq_id))
        if seq.slot.seq is seq:
            seq.slot.seq = None
        self._slot_freed.notify_all()

    def forget(self) -> None:
        """Reuse no cached prefix from now on: the free slots' next
        sequences read their whole prompt."""
        with self._lock:
            for slot in self._slots:
                if slot.seq is None:
                    slot.history = []

    def idle(self) -> bool:
        with self._lock:
            return not self._active

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._slot_freed.wait_for(lambda: not self._active, timeout)

    # -- the batch thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                work = self._gather()
                if work is None:
                    return
            self._step(*work)

    def _gather(self) -> tuple[list[tuple[Sequence, list[int], bool]], list[Sequence]] | None:
        """(Under the lock.) Wait for work, then take it: ``(parts, seqs)``
        where each part is (sequence, tokens, wants logits)."""
        cv = self._work
        deadline: float | None = None
        while True:
            if self._closing:
                return None
            for seq in [s for s in self._active if s.released and s.state != _IN_FLIGHT]:
                self._free(seq)
            ready = [s for s in self._active if s.state in (_QUEUED, _PREFILL)]
            sampling = [s for s in self._active if s.state == _SAMPLING]
            if ready and not sampling:
                break
            if ready:
                # wait briefly for consumers still sampling, so they share the step
                now = time.monotonic()
                if deadline is None:
                    deadline = now + CONSUMER_GRACE_S
                if now >= deadline:
                    break
                cv.wait(deadline - now)
            else:
                deadline = None
                cv.wait()
        parts: list[tuple[Sequence, list[int], bool]] = []
        budget = self.prefill_chunk
        for seq in ready:
            if seq.state == _QUEUED:
                parts.append((seq, [seq.pending], True))  # type: ignore[list-item]
        for seq in ready:
            if seq.state == _PREFILL and budget > 0:
                start = seq.next_prompt
                chunk = seq.prompt[start:start + budget]
                budget -= len(chunk)
                parts.append((seq, chunk, start + len(chunk) == len(seq.prompt)))
        for seq, _, _ in parts:
            seq.state = _IN_FLIGHT
        return parts, [p[0] for p in parts]

    def _trim(self, seq: Sequence) -> None:
        """First step of a sequence: cut its slot's cache back to the reused prefix."""
        slot = seq.slot
        if seq.keep and not L.llama_memory_seq_rm(self._mem, slot.seq_id, seq.keep, -1):
            seq.keep = seq.reused = seq.next_prompt = 0  # this cache cannot be cut: start afresh
        if not seq.keep:
            L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.history = slot.history[:seq.keep]
        self.reused_tokens += seq.keep
        seq.trimmed = True

    def _step(self, parts: list[tuple[Sequence, list[int], bool]], seqs: list[Sequence]) -> None:
        for seq in seqs:
            if not seq.trimmed:
                self._trim(seq)
        failed: dict[Sequence, str] = {}
        code = self._decode(parts)
        if code != 0 and len(parts) > 1:
            # find the culprit: decode each part alone (a failed decode leaves the cache as it was)
            for part in parts:
                one = self._decode([part])
                if one == 0:
                    self._collect([part])
                else:
                    failed[part[0]] = _decode_error(one)
        elif code != 0:
            failed[parts[0][0]] = _decode_error(code)
        else:
            self._collect(parts)
        self.steps += 1
        self.max_batch_seqs = max(self.max_batch_seqs, len(parts))
        with self._lock:
            for seq, error in failed.items():
                L.llama_memory_seq_rm(self._mem, seq.slot.seq_id, -1, -1)
                seq.slot.history = []
                seq.error = f"llama.cpp failed to decode: {error}"
                log.error("sequence in slot %d failed: %s", seq.slot.seq_id, seq.error)
            for seq, _tokens, wants in parts:
                if seq in failed:
                    seq.state = _FAILED
                    seq.ready.set()
                elif wants:
                    seq.state = _SAMPLING
                    seq.ready.set()
                else:
                    seq.state = _PREFILL
                if seq.released:
                    self._free(seq)

    def _decode(self, parts: list[tuple[Sequence, list[int], bool]]) -> int:
        batch = self._batch
        n = 0
        for seq, tokens, wants in parts:
            pos = len(seq.slot.history)
            sid = seq.slot.seq_id
            last = len(tokens) - 1
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sid
                batch.logits[n] = wants and j == last
                n += 1
        batch.n_tokens = n
        # a step of a few tokens is over in milliseconds: more threads only add
        # barriers, at which a worker that lost its core to the server's own
        # Python threads (sampling, streaming the last token) holds all up
        threads = self.threads if n >= SMALL_STEP_TOKENS else 1
        if threads != self._threads_now:
            L.llama_set_n_threads(self._ctx, threads, threads)
            self._threads_now = threads
        with _ErrorLines():
            return int(L.llama_decode(self._ctx, batch))

    def _collect(self, parts: list[tuple[Sequence, list[int], bool]]) -> None:
        """After a successful decode of ``parts``: histories and logits."""
        n = 0
        for seq, tokens, wants in parts:
            n += len(tokens)
            seq.slot.history.extend(tokens)
            if seq.next_prompt < len(seq.prompt):  # a prompt chunk
                seq.next_prompt += len(tokens)
            else:  # the sampled token
                seq.pending = None
            if wants:
                ptr = L.llama_get_logits_ith(self._ctx, n - 1)
                seq.logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # -- embeddings ----------------------------------------------------------------------

    def embed(self, tokens: list[int]) -> np.ndarray:
        """The mean of the last hidden state over ``tokens``, L2-normalised
        (float32). A context of its own (``embeddings=True``, mean pooling,
        one sequence of up to ``slot_context`` tokens), made on first use:
        the batch's KV cache and prefix reuse are never touched. Blocking;
        one input at a time."""
        if not tokens or len(tokens) > self.slot_context:
            raise EngineError(f"an input of {len(tokens)} tokens does not fit {self.slot_context}")
        with self._embed_lock:
            if self._embed_ctx is None:
                params = L.llama_context_default_params()
                params.n_ctx = params.n_batch = params.n_ubatch = self.slot_context
                params.n_seq_max = 1
                params.embeddings = True
                params.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
                params.n_threads = params.n_threads_batch = self.threads
                with _ErrorLines() as errors:
                    ctx = L.llama_init_from_model(self._model, params)
                if not ctx:
                    raise EngineError(errors.reason("llama.cpp could not create an embeddings context"))
                self._embed_ctx = ctx
                self._embed_batch = L.llama_batch_init(self.slot_context, 0, 1)
            ctx, batch = self._embed_ctx, self._embed_batch
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = len(tokens)
            with _ErrorLines():
                code = int(L.llama_decode(ctx, batch))
            if code != 0:
                raise EngineError(f"llama.cpp failed to embed: {_decode_error(code)}")
            ptr = L.llama_get_embeddings_seq(ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            n = int(L.llama_model_n_embd(self._model))
            vector = np.ctypeslib.as_array(ptr, shape=(n,)).astype(np.float32, copy=True)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._work.notify_all()
            self._slot_freed.notify_all()
            for seq in self._active:
                seq.ready.set()
        self._thread.join(timeout=30)
        if self._embed_ctx is not None:
            L.llama_batch_free(self._embed_batch)
            L.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._batch is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None


def _decode_error(code: int) -> str:
    if code == 1:
        return "no room left in the KV cache (code 1)"
    if code == 2:
        return "aborted (code 2)"
    if code == -1:
        return "invalid input batch (a token id outside the vocabulary?) (code -1)"
    return f"llama_decode returned {code}"


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
