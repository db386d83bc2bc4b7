"""``ScriptedBackend``: a real ``Backend`` whose "model" yields a fixed script
of tokens, with a settable delay per token. It builds real logits (the
scripted token is the most likely) and calls the kernel's sampler chain, so
sampling, processors, stop strings, the queue and cancellation all run for
real -- only the neural network is replaced. ``BackendPlugin`` registers
backend objects as a plugin."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InvalidRequest
from ..hookspecs import Backend, StepFunction, hookimpl
from ..types import FinishReason, GenerationRequest, ModelInfo, PreparedPrompt, TokenPiece, Vocabulary


class ScriptedBackend(Backend):
    """A backend that "generates" ``script`` (a list of token texts)."""

    def __init__(
        self,
        script: Sequence[str] = ("Hello", ",", " world", "!"),
        *,
        name: str = "scripted",
        models: Sequence[str] = ("scripted-model",),
        delay_s: float = 0.0,
        load_s: float = 0.0,
        context_length: int = 4096,
        max_concurrency: int = 1,
        eos_at_end: bool = True,
        extra_vocab: Sequence[str] = (),
        embedding_dimensions: int | None = None,
        runs_inline: bool = False,
    ) -> None:
        if runs_inline and (delay_s or load_s):
            raise ValueError("a ScriptedBackend that sleeps (delay_s, load_s) blocks: it cannot run inline")
        self.name = name
        #: ``Backend.runs_inline``: with no delays, nothing here blocks
        self.runs_inline = runs_inline
        self.script = list(script)
        self.model_ids = list(models)
        self.delay_s = delay_s
        self.load_s = load_s
        self.context_length = context_length
        self.max_concurrency = max_concurrency
        self.eos_at_end = eos_at_end
        #: None: no embeddings; else ``embed`` gives bag-of-words vectors this long
        self.embedding_size = embedding_dimensions
        self.embedded: list[list[int]] = []  #: every input ``embed`` read
        words = sorted(set(self.script) | set(extra_vocab))
        self.tokens = ["<eos>", *words]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.eos_id = 0
        self._loaded: str | None = None
        self._vocabulary: Vocabulary | None = None
        self.loads: list[str] = []
        self.generations = 0
        self.prompts: list[str] = []
        self.running = threading.Event()  #: set while generate() runs
        self.max_parallel_seen = 0
        self._parallel = 0
        self._lock = threading.Lock()

    # -- Backend ------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, context_length=self.context_length, owned_by="test") for m in self.model_ids]

    def loaded_model(self) -> str | None:
        return self._loaded

    def load_model(self, model_id: str) -> None:
        if model_id not in self.model_ids:
            raise ValueError(f"no model {model_id}")
        time.sleep(self.load_s)
        self._loaded = model_id
        self.loads.append(model_id)

    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        if request.messages is not None:
            text = "".join(f"<{m.role}>{m.content}\n" for m in request.messages) + "<assistant>"
        else:
            text = request.prompt or ""
        # one token per whitespace-separated word, at least one
        n = max(1, len(text.split()))
        return PreparedPrompt(model=model, token_ids=list(range(n)), text=text,
                              context_length=self.context_length)

    def vocabulary(self, model: ModelInfo) -> Vocabulary:
        # built once, as a real backend keeps its tokenizer's (every model
        # here shares the one script vocabulary)
        if self._vocabulary is None:
            self._vocabulary = self._build_vocabulary()
        return self._vocabulary

    def _build_vocabulary(self) -> Vocabulary:
        def encode(text: str) -> list[int]:
            out, rest = [], text
            while rest:
                match = max((t for t in self.tokens[1:] if rest.startswith(t)), key=len, default=None)
                if match is None:
                    raise ValueError(f"cannot encode {rest!r}")
                out.append(self.ids[match])
                rest = rest[len(match):]
            return out

        return Vocabulary(
            token_bytes=[b""] + [t.encode() for t in self.tokens[1:]],
            eos_token_ids=[self.eos_id],
            control_token_ids=frozenset({self.eos_id}),
            encode=encode,
        )

    def generate(self, prompt: PreparedPrompt, step: StepFunction, max_tokens: int,
                 cancelled: threading.Event) -> Iterator[TokenPiece]:
        self.generations += 1
        self.prompts.append(prompt.text)
        with self._lock:
            self._parallel += 1
            self.max_parallel_seen = max(self.max_parallel_seen, self._parallel)
        self.running.set()
        try:
            vocab = len(self.tokens)
            for i in range(max_tokens):
                if cancelled.is_set():
                    return
                if self.delay_s:
                    time.sleep(self.delay_s)
                logits = np.zeros(vocab, dtype=np.float32)
                if i < len(self.script):
                    logits[self.ids[self.script[i]]] = 10.0
                elif self.eos_at_end:
                    logits[self.eos_id] = 10.0
                else:
                    logits[self.ids[self.script[i % len(self.script)]]] = 10.0
                token = step(logits)
                if token == self.eos_id:
                    yield TokenPiece(token, "", FinishReason.STOP)
                    return
                last = i + 1 == max_tokens
                yield TokenPiece(token, self.tokens[token], FinishReason.LENGTH if last else None)
        finally:
            with self._lock:
                self._parallel -= 1
            self.running.clear()


    # -- embeddings (with ``embedding_dimensions=N``) ----------------------------
    # one token per whitespace-separated word (a stable hash of the word, below
    # 2**16); the vector counts each token id modulo N, L2-normalised: inputs
    # with the same words get the same vector, inputs sharing words are close

    def embedding_dimensions(self, model: ModelInfo) -> int | None:
        return self.embedding_size

    def prepare_embeddings(self, inputs, model: ModelInfo) -> list[list[int]]:
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                out.append([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=2).digest(), "big")
                            for w in item.split()])
            else:
                if any(not 0 <= t < 2**16 for t in item):
                    raise InvalidRequest(f"input[{i}] holds a token id outside the vocabulary (0..65535)",
                                         param="input")
                out.append(list(item))
        return out

    def embed(self, model: ModelInfo, inputs: list[list[int]], cancelled: threading.Event) -> list[np.ndarray]:
        size = self.embedding_size or 0
        vectors = []
        for ids in inputs:
            if cancelled.is_set():
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            self.embedded.append(list(ids))
            v = np.zeros(size, dtype=np.float32)
            for t in ids:
                v[t % size] += 1.0
            norm = float(np.linalg.norm(v))
            vectors.append(v / norm if norm else v)
        return vectors


class BackendPlugin:
    """Wrap backend objects as a plugin: ``create_app(plugins=[BackendPlugin(b)])``."""

    def __init__(self, *backends: Backend, name: str = "test-backends") -> None:
        self.backends = backends
        self.__name__ = name

    @hookimpl
    def register_backends(self, register, kernel):
        for backend in self.backends:
            register(backend)
