"""ctransformers-based llama engine: raw logits, prefix reuse, no built-in sampling.

The engine evaluates tokens and exposes the logits of the last position as a
zero-copy numpy float32 view of llama.cpp's buffer. It never samples: the
caller's ``choose(logits) -> token_id`` does (ctransformers' own ``sample``
would apply a repetition penalty of 1.1 by default).

How ctransformers 0.2.27 handles positions (why we call the C API directly):
``LLM.eval`` keeps its own Python token list and always evaluates at
``n_past = len(that list)``. The C function ``ctransformers_llm_batch_eval(llm,
tokens, n, n_past, batch_size, threads)`` takes ``n_past`` explicitly and
llama.cpp's KV cache is positional, so evaluating at a smaller ``n_past``
simply overwrites the stale tail: that is the prefix reuse. Caveats:

* the C++ side silently clamps ``n_past`` to ``n_ctx - n`` when the batch would
  not fit, so this module checks the context limit itself;
* numerics depend on the call that evaluated a position: the bundled ggml's
  attention multiplies V by each softmax row over the call's whole KV length
  ``L = n_past + n`` (future positions as zeros), and its f16 dot product sums
  the first ``32 * (L // 32)`` elements in SIMD float lanes, the rest in
  double. So position ``i`` comes out one way ("aligned") when
  ``i < 32 * (L // 32)`` and another way (up to ~1 logit apart on SmolLM2)
  otherwise — e.g. every decoded token, unless ``(i + 1) % 32 == 0``. A cold
  prefill of ``N`` tokens whose calls end at multiples of 32 (and finally at
  ``N``) makes positions below ``32 * (N // 32)`` aligned and the rest not.
  The engine records how each cached position was computed, and ``prefill``
  reuses only the leading positions computed the way a cold run of the new
  prompt computes them (so a warm run gives exactly the tokens of a cold run;
  a previous answer, decoded token by token, is evaluated again as prompt).

Blocking code: run it in a worker thread. One engine serves one generation at
a time.

This module does not import the kernel.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .compat import ensure_compatible
from .gguf import GGUFError, read_gguf

log = logging.getLogger(__name__)

#: llama.cpp (Sept 2023) sizes its compute buffer for at most this many tokens per call
MAX_BATCH = 512
#: prefill chunk: throughput is flat from 64 to 512 tokens on 2 cores, and a
#: smaller chunk bounds the latency of cancelling a long prefill (~0.7 s here)
DEFAULT_BATCH = 128
#: the bundled ggml's f16 dot product handles this many elements per SIMD step
KV_ALIGN = 32

FINISH_STOP = "stop"          # a stop/eos token was chosen (it is not yielded)
FINISH_LENGTH = "length"      # max_tokens reached
FINISH_CONTEXT = "context"    # the context window is full
FINISH_CANCELLED = "cancelled"  # should_stop() returned True


class EngineError(Exception):
    """Model load or evaluation failed."""


class ContextOverflowError(EngineError):
    """The tokens do not fit into the context window."""


def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


class ThreadTuner:
    """How many threads each evaluation call gets, from measured speed.

    The bundled ggml's threads spin while they wait for each other, so with
    as many threads as cores, any other busy process leaves every step waiting
    for a descheduled thread: on 2 cores decoding falls from ~110 to ~20
    tokens/s. The thread count does not change the results (ggml splits rows
    between threads and computes each row the same way; checked bit for bit in
    the tests), so the engine may switch per call. It uses the candidate whose
    recent calls were fastest per token (median of the last ``window``), and
    every ``explore_every`` calls measures another candidate for ``burst``
    calls in a row (a burst, so that one descheduled call does not decide).
    On an idle machine that costs about 2 % of the rate; under contention it
    keeps about half the idle rate instead of collapsing. One tuner per kind
    of call (single-token decode, batched prefill)."""

    def __init__(self, max_threads: int, explore_every: int = 96, burst: int = 4, window: int = 8) -> None:
        self.candidates = sorted({max_threads, max(1, max_threads // 2)}, reverse=True)
        self.explore_every = explore_every
        self.burst = burst
        self.samples: dict[int, collections.deque[float]] = {
            t: collections.deque(maxlen=window) for t in self.candidates}
        self._calls = 0
        self._probe_index = 0
        self._probing: int | None = None
        self._probe_left = 0

    def pick(self) -> int:
        self._calls += 1
        if self._probe_left:
            self._probe_left -= 1
            return self._probing  # type: ignore[return-value]
        unmeasured = [t for t in self.candidates if len(self.samples[t]) < self.burst]
        if unmeasured:
            return unmeasured[0]
        if len(self.candidates) > 1 and self._calls % self.explore_every == 0:
            others = [t for t in self.candidates if t != self.best]
            self._probe_index = (self._probe_index + 1) % len(others)
            self._probing = others[self._probe_index]
            self._probe_left = self.burst - 1
            return self._probing
        return self.best

    def estimate(self, threads: int) -> float | None:
        xs = sorted(self.samples[threads])
        return xs[len(xs) // 2] if xs else None

    @property
    def best(self) -> int:
        measured = [(est, -t) for t in self.candidates if (est := self.estimate(t)) is not None]
        return -min(measured)[1] if measured else self.candidates[0]

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        if threads in self.samples:
            self.samples[threads].append(seconds / max(1, tokens))


class _FixedThreads:
    """``threads`` set explicitly: no tuning."""

    def __init__(self, threads: int) -> None:
        self.best = threads

    def pick(self) -> int:
        return self.best

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        pass


def _pick_lib() -> str | None:
    """ctransformers' prebuilt variant for this CPU, without py-cpuinfo (which
    takes ~1 s). None lets ctransformers decide."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    if "avx2" in flags:
                        return "avx2"
                    if "avx" in flags and "f16c" in flags:
                        return "avx"
                    return "basic"
    except OSError:
        pass
    return None


def default_compat_dir() -> Path:
    home = os.environ.get("ADYTON_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "adyton")
    return Path(home) / "cache" / "gguf-compat"


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaEngine:
    """One loaded GGUF model in ctransformers, driven token by token."""

    def __init__(
        self,
        *,
        max_ctx: int | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        lib: str | None = None,
        compat_dir: str | os.PathLike[str] | None = None,
        mmap: bool = True,
    ):
        """``max_ctx`` caps the model's trained context length (KV cache memory
        grows with it); ``threads`` fixes the CPU threads per call (default: up
        to the usable CPU count, tuned per call by ``ThreadTuner``); ``lib`` is a
        ctransformers variant (avx2/avx/basic) or a path to a libctransformers."""
        self.max_ctx = max_ctx
        self.threads = threads or default_threads()
        self.adaptive_threads = threads is None
        self._tuners: dict[bool, ThreadTuner | _FixedThreads] = {
            single: (ThreadTuner(self.threads) if threads is None else _FixedThreads(self.threads))
            for single in (True, False)
        }
        # a multiple of KV_ALIGN: calls end at multiples of 32 (but the last)
        self.batch_size = max(KV_ALIGN, min(int(batch_size), MAX_BATCH)) // KV_ALIGN * KV_ALIGN
        self.lib = lib
        self.compat_dir = Path(compat_dir) if compat_dir else default_compat_dir()
        self.mmap = mmap
        self._llm = None  # ctransformers.llm.LLM, kept for its lifetime management
        self._fn_eval: Any = None  # ctransformers' batch_eval (a ctypes function) once loaded
        self._handle = None
        self._ctx: list[int] = []
        # per cached position: computed "aligned" (see the module docstring)
        self._aligned: list[bool] = []
        self._lock = threading.RLock()
        self._view: np.ndarray | None = None
        self._view_addr = 0
        self.path: str | None = None
        self.compat_path: str | None = None
        self.n_ctx = 0
        self.n_ctx_train = 0
        self.vocab_size = 0
        self.eos_id: int | None = None
        self.bos_id: int | None = None
        self.finish_reason: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load a GGUF (rewritten for ctransformers if needed, cached in ``compat_dir``)."""
        path = os.fspath(path)
        meta = read_gguf(path)  # GGUFError if unreadable
        arch = meta.architecture
        n_train = meta.get(f"{arch}.context_length")
        n_train = int(n_train) if n_train is not None else 2048
        n_ctx = min(n_train, self.max_ctx) if self.max_ctx else n_train
        compat = ensure_compatible(path, self.compat_dir)

        from ctransformers.llm import LLM, Config  # heavy import, lazily

        config = Config(
            context_length=n_ctx,
            threads=self.threads,
            batch_size=self.batch_size,
            mmap=self.mmap,
            gpu_layers=0,
        )
        lib = self.lib or _pick_lib()
        self.close()
        try:
            llm = LLM(compat, "llama", config=config, lib=lib)
        except (RuntimeError, ValueError, OSError) as e:
            raise EngineError(f"{path}: ctransformers could not load the model: {e}") from e
        self._llm = llm
        self._handle = llm._llm
        self._fn_eval = llm._lib.ctransformers_llm_batch_eval
        self._fn_logits = llm._lib.ctransformers_llm_logits_data
        self._fn_logits_size = llm._lib.ctransformers_llm_logits_size
        self._fn_embeddings = llm._lib.ctransformers_llm_embeddings_data
        self._fn_embeddings_size = llm._lib.ctransformers_llm_embeddings_size
        self.path = path
        self.compat_path = compat
        self.n_ctx_train = n_train
        self.n_ctx = int(llm.context_length)
        self.vocab_size = int(llm.vocab_size)
        self.eos_id = int(llm.eos_token_id)
        self.bos_id = int(llm.bos_token_id)
        self._ctx = []
        self._aligned = []
        self._view = None
        self._view_addr = 0
        log.info(
            "loaded %s (n_ctx=%d, n_vocab=%d, threads=%s, lib=%s)",
            path, self.n_ctx, self.vocab_size,
            f"up to {self.threads}, tuned" if self.adaptive_threads else self.threads, lib,
        )

    def close(self) -> None:
        with self._lock:
            self._view = None
            self._view_addr = 0
            self._fn_eval = None
            self._handle = None
            self._ctx = []
            self._aligned = []
            llm, self._llm = self._llm, None
            del llm  # ctransformers frees the model in LLM.__del__

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def _require(self) -> None:
        if self._llm is None:
            raise EngineError("no model loaded")

    # ------------------------------------------------------------------ state

    @property
    def tokens(self) -> tuple[int, ...]:
        """Tokens currently evaluated into the KV cache, in order."""
        return tuple(self._ctx)

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset({self.eos_id} if self.eos_id is not None else ())

    def reset(self) -> None:
        """Forget the context (the next prefill evaluates everything)."""
        with self._lock:
            self._ctx = []
            self._aligned = []
            if self._llm is not None:
                self._llm.ctransformers_llm_reset()

    def logits(self) -> np.ndarray:
        """Zero-copy float32 view of the last evaluated position's logits.

        Valid until the next evaluation, reset or close; copy it to keep it.
        Writing into it is allowed (the next evaluation overwrites it)."""
        self._require()
        ptr = self._fn_logits(self._handle)
        size = int(self._fn_logits_size(self._handle))
        addr = ctypes.cast(ptr, ctypes.c_void_p).value or 0
        if not addr or size < self.vocab_size:
            raise EngineError("no logits available (nothing evaluated yet)")
        if addr != self._view_addr or self._view is None or self._view.shape[0] != self.vocab_size:
            full = np.ctypeslib.as_array(ptr, shape=(size,))
            self._view = full[size - self.vocab_size :]
            self._view_addr = addr
        return self._view

    def _eval_at(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> bool:
        """Evaluate ``tokens`` after the current context, in batches. Returns False
        if ``should_stop`` interrupted it (the context then holds what was done)."""
        n_past = len(self._ctx)
        if n_past + len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{n_past + len(tokens)} tokens do not fit the context window of {self.n_ctx}"
            )
        vocab = self.vocab_size
        start = 0
        while start < len(tokens):
            if start and should_stop is not None and should_stop():
                return False
            # every call but the last ends at a multiple of KV_ALIGN
            end = n_past // KV_ALIGN * KV_ALIGN + self.batch_size
            chunk = [int(t) for t in tokens[start : start + end - n_past]]
            for t in chunk:
                if not 0 <= t < vocab:
                    raise EngineError(f"token id {t} out of range (vocab {vocab})")
            arr = (ctypes.c_int * len(chunk))(*chunk)
            tuner = self._tuners[len(chunk) == 1]
            threads = tuner.pick()
            t0 = time.perf_counter()
            ok = self._fn_eval(self._handle, arr, len(chunk), n_past, len(chunk), threads)
            tuner.record(threads, time.perf_counter() - t0, len(chunk))
            if not ok:
                raise EngineError("llama.cpp failed to evaluate tokens")
            length = n_past + len(chunk)
            simd = length // KV_ALIGN * KV_ALIGN
            self._aligned.extend([i < simd for i in range(n_past, length)])
            n_past = length
            start += len(chunk)
            self._ctx.extend(chunk)
        return True

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` to the context; logits of the last one (a view)."""
        self._require()
        if not tokens:
            raise ValueError("eval() needs at least one token")
        with self._lock:
            self._eval_at(tokens)
            return self.logits()

    def prefill(
        self, prompt_ids: Sequence[int], should_stop: Callable[[], bool] | None = None
    ) -> np.ndarray | None:
        """Make the context equal ``prompt_ids`` and return the last logits.

        Only the tail after the longest common prefix with the current context
        is evaluated; when the whole prompt is already there, its last token is
        re-evaluated for fresh logits. Returns None if ``should_stop`` interrupted."""
        self._require()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prefill() needs at least one token")
        if len(prompt) > self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(prompt)} tokens does not fit the context window of {self.n_ctx}"
            )
        with self._lock:
            keep = common_prefix_len(self._ctx, prompt)
            if keep == len(prompt):
                keep -= 1
            # reuse only positions computed the way a cold run computes them
            cold_simd = len(prompt) // KV_ALIGN * KV_ALIGN
            aligned = self._aligned
            for i in range(keep):
                if aligned[i] != (i < cold_simd):
                    keep = i
                    break
            del self._ctx[keep:]
            del self._aligned[keep:]
            if not self._eval_at(prompt[keep:], should_stop):
                return None
            self.last_prefill_evaluated = len(prompt) - keep
            return self.logits()

    last_prefill_evaluated = 0  # tokens the last prefill() actually evaluated

    # ------------------------------------------------------------------ embeddings

    def hidden_state(self) -> np.ndarray:
        """A copy of the last evaluated position's final hidden state (after
        the output norm, before the output projection): what the bundled
        llama.cpp keeps as "embeddings", ``n_embd`` float32 values."""
        self._require()
        size = int(self._fn_embeddings_size(self._handle))
        ptr = self._fn_embeddings(self._handle)
        if size <= 0 or not ctypes.cast(ptr, ctypes.c_void_p).value:
            raise EngineError("this model exposes no hidden states (embeddings)")
        return np.ctypeslib.as_array(ptr, shape=(size,)).copy()

    def embed(self, token_ids: Sequence[int], pooling: str = "mean",
              should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
        """The pooled final hidden states of ``token_ids`` (not normalised),
        or None if ``should_stop`` interrupted.

        ``pooling="mean"`` averages every position's hidden state: llama.cpp
        keeps only the last position of a call, so the tokens are evaluated
        one call each, from position 0 (slower than a prefill). ``"last"`` is
        the last position's state after a prefill (which reuses the cached
        prefix). Either way the context afterwards holds ``token_ids``,
        recorded like any evaluation, so a following ``prefill`` reuses it
        exactly as it would after a generation."""
        self._require()
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("embed() needs at least one token")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"input of {len(ids)} tokens does not fit the context window of {self.n_ctx}"
            )
        with self._lock:
            if pooling == "last":
                if self.prefill(ids, should_stop) is None:
                    return None
                return self.hidden_state()
            if pooling != "mean":
                raise ValueError(f"unknown pooling {pooling!r}")
            del self._ctx[:]
            del self._aligned[:]
            total = np.zeros(0, dtype=np.float64)
            for i, token in enumerate(ids):
                if i and should_stop is not None and should_stop():
                    return None
                self._eval_at([token])
                state = self.hidden_state()
                total = state.astype(np.float64) if i == 0 else total + state
            return (total / len(ids)).astype(np.float32)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_ids: Sequence[int],
        choose: Callable[[np.ndarray], int],
        max_tokens: int,
        should_stop: Callable[[], bool] | None = None,
        stop_ids: Iterable[int] | None = None,
    ) -> Generator[int, None, str]:
        """Yield chosen token ids after ``prompt_ids``.

        ``choose(logits)`` picks each token from the raw logits view (it may
        modify it in place). ``should_stop()`` is checked before every step, so
        cancellation takes effect within one token (one prefill batch while
        prefilling). A token in ``stop_ids`` (default: the model's eos) ends the
        generation and is NOT yielded. The generator's return value (also left
        in ``self.finish_reason``) is one of: stop, length, context, cancelled.
        """
        self._require()
        stop = frozenset(self.eos_ids if stop_ids is None else (int(i) for i in stop_ids))
        check = should_stop or (lambda: False)
        self.finish_reason = None
        reason = FINISH_LENGTH
        if max_tokens <= 0:
            self.finish_reason = reason
            return reason
        if check():
            self.finish_reason = FINISH_CANCELLED
            return FINISH_CANCELLED
        logits = self.prefill(prompt_ids, check)
        if logits is None:
            self.finish_reason = FINISH_CANCELLED
            return FINISH_CANCELLED
        produced = 0
        while True:
            if check():
                reason = FINISH_CANCELLED
                break
            tok = int(choose(logits))
            if not 0 <= tok < self.vocab_size:
                raise EngineError(f"choose() returned token id {tok} outside the vocabulary")
            if tok in stop:
                reason = FINISH_STOP
                break
            yield tok
            produced += 1
            if produced >= max_tokens:
                reason = FINISH_LENGTH
                break
            if len(self._ctx) >= self.n_ctx:
                reason = FINISH_CONTEXT
                break
            if check():
                reason = FINISH_CANCELLED
                break
            logits = self.eval([tok])
        self.finish_reason = reason
        return reason


def greedy(logits: np.ndarray) -> int:
    """argmax chooser (ties: lowest id, like llama.cpp's greedy sampler)."""
    return int(np.argmax(logits))


__all__ = [
    "FINISH_CANCELLED",
    "FINISH_CONTEXT",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "ContextOverflowError",
    "EngineError",
    "GGUFError",
    "LlamaEngine",
    "ThreadTuner",
    "common_prefix_len",
    "default_threads",
    "greedy",
]
