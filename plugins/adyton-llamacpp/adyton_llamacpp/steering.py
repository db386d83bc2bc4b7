"""Hidden states and steering on llama.cpp, apart from the shared batch.

A control vector (``llama_set_adapter_cvec``) applies to a whole
``llama_context``: every sequence of the batch context would be steered. So
steered and observed generations, and hidden-state reads, run on a second
context created on the same loaded ``llama_model`` (the weights are shared,
only a KV cache of one slot is added): the ``SideContext``, one job at a time
(its lock), its control vector set for the job and cleared after it. The
batch context never carries a control vector, so a concurrent unsteered
request is never touched.

Hidden states: the context's ``cb_eval`` callback (ggml's scheduler
evaluation callback) asks for the tensors named ``l_out-<il>`` — the
residual stream at the output of layer ``il`` (0-based), after the control
vector of that layer was added — and copies their rows out with
``ggml_backend_tensor_get`` once computed. llama.cpp keeps only the rows of
positions that produce output in the last layer, so a read of every
position asks for the output of every position.

Control vectors follow llama.cpp's layout (``common.cpp``'s loader): layer
``il`` (1 .. n_layer - 1; layer 0 cannot be steered) is
``data[(il - 1) * n_embd : il * n_embd]``.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import llama_cpp as L
import numpy as np
from llama_cpp._ggml import libggml

from .engine import CANCEL_POLL_S, EngineError, _decode_error, _ErrorLines

_ggml_get_name = libggml.ggml_get_name
_ggml_get_name.argtypes = [ctypes.c_void_p]
_ggml_get_name.restype = ctypes.c_char_p
_ggml_nbytes = libggml.ggml_nbytes
_ggml_nbytes.argtypes = [ctypes.c_void_p]
_ggml_nbytes.restype = ctypes.c_size_t
_ggml_tensor_get = libggml.ggml_backend_tensor_get
_ggml_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_ggml_tensor_get.restype = None

#: struct ggml_tensor starts ``enum ggml_type type; ggml_backend_buffer * buffer; int64_t ne[4]``
_NE_OFFSET = 16
_GGML_TYPE_F32 = 0

_PREFIX = b"l_out-"


class SideContext:
    """A one-sequence context on a ``BatchEngine``'s weights, for steered or
    observed work. Every public method takes the lock: one job at a time."""

    def __init__(self, model: Any, *, n_ctx: int, threads: int) -> None:
        self.lock = threading.Lock()
        self._model = model
        self.n_embd = int(L.llama_model_n_embd(model))
        self.n_layer = int(L.llama_model_n_layer(model))
        self.n_ctx = n_ctx
        self.n_batch = min(n_ctx, 512)
        vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        #: layers whose rows the callback copies, and where they go
        self._wanted: frozenset[int] = frozenset()
        self._rows: dict[int, np.ndarray] = {}
        self._callback = L.ggml_backend_sched_eval_callback(self._eval)  # kept alive with self
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_seq_max = 1
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_threads = params.n_threads_batch = threads
        params.cb_eval = self._callback
        params.cb_eval_user_data = None
        with _ErrorLines() as errors:
            self._ctx = L.llama_init_from_model(model, params)
        if not self._ctx:
            raise EngineError(errors.reason("llama.cpp could not create a context for hidden states"))
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._steered = False

    # -- the evaluation callback (on llama.cpp's compute thread, during llama_decode) ----

    def _layer_of(self, tensor: int) -> int | None:
        name = _ggml_get_name(tensor)
        if not name or not name.startswith(_PREFIX):
            return None
        try:
            layer = int(name[len(_PREFIX):])
        except ValueError:
            return None
        return layer if layer in self._wanted else None

    def _eval(self, tensor: int, ask: bool, user_data: Any) -> bool:
        try:
            layer = self._layer_of(tensor)
            if ask:
                return layer is not None
            if layer is None:
                return True
            if ctypes.c_int32.from_address(tensor).value != _GGML_TYPE_F32:
                return True
            ne0, ne1 = (ctypes.c_int64 * 2).from_address(tensor + _NE_OFFSET)
            nbytes = int(_ggml_nbytes(tensor))
            if ne0 != self.n_embd or nbytes != ne0 * ne1 * 4:
                return True
            rows = np.empty((ne1, ne0), dtype=np.float32)
            _ggml_tensor_get(tensor, rows.ctypes.data, 0, nbytes)
            self._rows[layer] = rows
        except Exception:  # noqa: BLE001 - never raise through C
            return True
        return True

    # -- control vectors ------------------------------------------------------------------

    def steerable_layers(self) -> range:
        return range(1, self.n_layer)

    def _apply(self, vectors: dict[int, np.ndarray] | None, strength: float) -> None:
        if not vectors or strength == 0:
            self._clear()
            return
        data = np.zeros(self.n_embd * self.n_layer, dtype=np.float32)
        for layer, vector in vectors.items():
            if not 1 <= layer < self.n_layer:
                raise EngineError(f"layer {layer} cannot be steered (1 to {self.n_layer - 1})")
            data[(layer - 1) * self.n_embd: layer * self.n_embd] = np.asarray(vector, np.float32) * strength
        code = L.llama_set_adapter_cvec(self._ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                        data.size, self.n_embd, 1, self.n_layer - 1)
        if code != 0:
            raise EngineError(f"llama.cpp refused the control vector (code {code})")
        self._steered = True

    def _clear(self) -> None:
        if self._steered:
            L.llama_set_adapter_cvec(self._ctx, None, 0, self.n_embd, -1, -1)
            self._steered = False

    # -- decoding ---------------------------------------------------------------------------

    def _decode(self, tokens: Sequence[int], start: int, *, all_outputs: bool) -> dict[int, np.ndarray]:
        """Decode ``tokens`` at positions ``start ..``; the captured rows of
        this call (every position if ``all_outputs``, else the last)."""
        if start + len(tokens) > self.n_ctx:
            raise EngineError(f"{start + len(tokens)} tokens do not fit the context of {self.n_ctx}")
        batch = self._batch
        last = len(tokens) - 1
        for j, token in enumerate(tokens):
            batch.token[j] = token
            batch.pos[j] = start + j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = all_outputs or j == last
        batch.n_tokens = len(tokens)
        self._rows = {}
        with _ErrorLines():
            code = int(L.llama_decode(self._ctx, batch))
        if code != 0:
            raise EngineError(f"llama.cpp failed to decode: {_decode_error(code)}")
        return self._rows

    def _reset(self, layers: Sequence[int]) -> None:
        L.llama_memory_seq_rm(self._mem, 0, -1, -1)
        self._wanted = frozenset(layers)

    def _acquire(self, cancelled: threading.Event) -> bool:
        """Wait for the context (another steered job may hold it), giving up
        when ``cancelled`` is set."""
        while not self.lock.acquire(timeout=CANCEL_POLL_S):
            if cancelled.is_set():
                return False
        return True

    def hidden_states(self, tokens: list[int], layers: Sequence[int],
                      cancelled: threading.Event) -> dict[int, np.ndarray] | None:
        """``{layer: [len(tokens), n_embd]}`` without steering; None if
        cancelled meanwhile."""
        if not self._acquire(cancelled):
            return None
        with _Held(self.lock):
            self._clear()
            self._reset(layers)
            out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
            # only the last layer is cut to the positions with an output (each
            # costs a vocabulary of logits): ask for all of them only then
            every = (self.n_layer - 1) in layers
            try:
                for start in range(0, len(tokens), self.n_batch):
                    if cancelled.is_set():
                        return None
                    chunk = tokens[start:start + self.n_batch]
                    rows = self._decode(chunk, start, all_outputs=every)
                    for layer in layers:
                        got = rows.get(layer)
                        if got is None or len(got) != len(chunk):
                            raise EngineError(f"llama.cpp did not report the hidden state of layer {layer}")
                        out[layer].append(got)
            finally:
                self._wanted = frozenset()
            return {layer: np.concatenate(parts) for layer, parts in out.items()}

    def generate(self, tokens: list[int], step: Callable[[np.ndarray], int], max_tokens: int,
                 cancelled: threading.Event, *, vectors: dict[int, np.ndarray] | None, strength: float,
                 observe: Sequence[int], observer: Callable[[int, int, dict[int, np.ndarray]], None] | None,
                 is_eog: Callable[[int], bool], piece: Callable[[int], bytes],
                 ) -> Generator[tuple[int, str, bool, bool], None, None]:
        """Yields ``(token, text, end_of_generation, last)`` per token. Holds
        the lock (and the control vector) until the generator ends."""
        if not self._acquire(cancelled):
            return
        with _Held(self.lock):
            try:
                self._apply(vectors, strength)
                self._reset(observe if observer is not None else ())
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                rows: dict[int, np.ndarray] = {}
                for start in range(0, len(tokens), self.n_batch):
                    if cancelled.is_set():
                        return
                    rows = self._decode(tokens[start:start + self.n_batch], start, all_outputs=False)
                position = len(tokens)
                for n in range(max_tokens):
                    if cancelled.is_set():
                        return
                    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, -1),
                                                   shape=(self.n_vocab,)).copy()
                    token = step(logits)
                    if observer is not None:
                        observer(n, token, {layer: rows[layer][-1].copy() for layer in observe if layer in rows})
                    if is_eog(token):
                        yield token, "", True, False
                        return
                    last = n + 1 == max_tokens or position + 1 >= self.n_ctx
                    text = decoder.decode(piece(token)) if 0 <= token < self.n_vocab else ""
                    yield token, text, False, last
                    if last:
                        return
                    rows = self._decode([token], position, all_outputs=False)
                    position += 1
            finally:
                self._wanted = frozenset()
                self._clear()

    def close(self) -> None:
        with self.lock:
            if self._batch is not None:
                L.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                L.llama_free(self._ctx)
                self._ctx = None


class _Held:
    """Release an already acquired lock at the end of a block."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


_sides_lock = threading.Lock()


def side_context(engine: Any, threads: int) -> SideContext:
    """The ``SideContext`` of ``engine`` (a ``BatchEngine``), created at first
    use and freed by ``close_side_context`` before the engine's weights."""
    with _sides_lock:
        side = getattr(engine, "side", None)
        if side is None:
            side = SideContext(engine._model, n_ctx=engine.slot_context, threads=threads)
            engine.side = side
        return side


def close_side_context(engine: Any) -> None:
    side = getattr(engine, "side", None)
    if side is not None:
        engine.side = None
        side.close()


__all__ = ["SideContext", "close_side_context", "side_context"]


# -- the backend's side of the kernel contract (``LlamaCppBackend`` delegates here) ----------


def model_shape(vocab: Any) -> tuple[int, int] | None:
    """(n_layers, hidden size) from a ``GGUFVocab``'s metadata (no weights)."""
    arch = vocab.architecture
    layers, embd = vocab.meta(f"{arch}.block_count"), vocab.meta(f"{arch}.embedding_length")
    if not (layers and layers.isdigit() and embd and embd.isdigit()):
        return None
    return int(layers), int(embd)


def read_hidden_states(backend: Any, model_id: str, inputs: list[list[int]], layers: Sequence[int],
                       cancelled: threading.Event) -> list[dict[int, np.ndarray]]:
    from adyton import BackendError

    out: list[dict[int, np.ndarray]] = []
    with backend._lease(model_id) as engine:
        side = side_context(engine, backend.threads())
        for tokens in inputs:
            try:
                states = side.hidden_states(tokens, layers, cancelled)
            except EngineError as exc:
                raise BackendError(f"model '{model_id}': {exc}") from exc
            if states is None:
                return out
            out.append(states)
    return out


def generate_apart(backend: Any, prompt: Any, step: Callable[[np.ndarray], int], max_tokens: int,
                   cancelled: threading.Event) -> Iterator[Any]:
    """``Backend.generate`` for a steered or observed prompt, on the side context."""
    from adyton import BackendError, FinishReason, TokenPiece

    entry = backend._model(prompt.model.id)
    vocab = entry.vocab
    steering, observer = prompt.steering, prompt.observer
    if steering is not None and steering.strength == 0:
        steering = None
    with backend._lease(prompt.model.id) as engine:
        side = side_context(engine, backend.threads())
        pieces = side.generate(
            prompt.token_ids, step, max_tokens, cancelled,
            vectors=steering.vectors if steering is not None else None,
            strength=steering.strength if steering is not None else 0.0,
            observe=observer.layers if observer is not None else (),
            observer=observer.callback if observer is not None else None,
            is_eog=vocab.is_eog, piece=vocab.token_piece)
        try:
            for token, text, eog, last in pieces:
                if eog:
                    yield TokenPiece(token, "", FinishReason.STOP)
                    return
                yield TokenPiece(token, text, FinishReason.LENGTH if last else None)
        except EngineError as exc:
            raise BackendError(f"model '{prompt.model.id}': {exc}") from exc
        finally:
            pieces.close()
