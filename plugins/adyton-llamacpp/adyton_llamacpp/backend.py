"""The ``llamacpp`` backend: any GGUF llama.cpp runs, several requests at once.

Models are the ``*.gguf`` files under ``[llamacpp] models_dir`` (default
``$ADYTON_HOME/models``, the directory adyton-llama serves too) plus
``[llamacpp] model_paths``. A file llama.cpp cannot open is skipped with one
log line naming it and the reason, and is not listed (requests for it get
``model_not_found``).

Which backend serves a file when adyton-llama is installed too: model ids
must be unique across backends (the kernel resolves the first match), so a
file whose id another installed backend already lists is listed here as
``<id>-llamacpp`` (its file-stem alias suffixed the same way). Files
only llama.cpp can run (Gemma 3, Qwen ...) keep their plain id. Point
``[llamacpp] models_dir`` elsewhere to keep the two sets apart.

Concurrency: ``max_concurrency = slots``, so the kernel's engine queue runs
up to ``slots`` requests' ``generate()`` at once, each on its own engine
thread; each joins the one ``BatchEngine`` of the loaded model as a sequence.

Model switching with several engine threads (``ModelRegistry.load_blocking``
runs on each job's engine thread): ``generate`` takes a *lease* on the model
it was prepared for. A lease is granted only while that model is loaded and
no switch is pending; a switch (``load_model``, or a lease for another
model) first marks itself pending — new leases on the old model then wait —
and waits until the old model's leases drain, then swaps the weights. So no
sequence ever runs on the wrong weights and a switch cannot starve.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from adyton import (
    Backend,
    BackendError,
    ChatTemplate,
    ChatTemplateError,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    Kernel,
    ModelInfo,
    PreparedPrompt,
    StepFunction,
    TokenPiece,
    Vocabulary,
)

from . import steering
from .engine import BatchEngine, EngineError, GGUFVocab

log = logging.getLogger("adyton.llamacpp")

_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d[\w]*|f16|f32|bf16)$", re.IGNORECASE)
#: the id suffix of a file another backend already serves under its plain id
SHARED_SUFFIX = "-llamacpp"


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_slots() -> int:
    """Two sequences per core, between 2 and 8: on a CPU a batch of 4-8
    sequences gives most of the throughput gain (the weights are read once
    per step), more only costs KV memory."""
    return max(2, min(8, 2 * _usable_cores()))


class LlamaCppSettings(BaseModel):
    """The ``[llamacpp]`` settings section."""

    models_dir: Path | None = Field(None,
                                    description="Where *.gguf models live (default: $ADYTON_HOME/models, shared with"
                                                " adyton-llama; see the plugin README for which backend serves which"
                                                " file).")
    model_paths: list[Path] = Field(default_factory=list, description="Extra GGUF files to serve.")
    slots: int | None = Field(None, ge=1, le=64,
                              description="Sequences decoded together (requests running at once). Default: 2 per "
                                          "usable core, 2 to 8.")
    slot_context: int = Field(1024, ge=64,
                              description="Context of each slot in tokens (capped by the model's own); the KV cache "
                                          "holds slots x slot_context tokens.")
    threads: int | None = Field(None, ge=1,
                                description="CPU threads for llama.cpp. Default: half the usable cores (as "
                                            "llama-cpp-python's server): ggml's threads spin at every barrier, so on"
                                            " a shared machine more threads than idle cores make each step many "
                                            "times slower.")
    prefill_chunk: int = Field(128, ge=8, le=4096,
                               description="Most prompt tokens read per batch step, so a long prompt does not stall "
                                           "the running generations.")


@dataclass
class _Model:
    info: ModelInfo
    path: Path
    mtime: float
    vocab: GGUFVocab
    template: ChatTemplate
    control_texts: tuple[str, ...]
    vocabulary: Vocabulary | None = None


def model_id_for(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.stem
    return _QUANT_SUFFIX.sub("", stem).lower() or stem.lower()


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, settings: LlamaCppSettings, home: Path, kernel: Kernel | None = None) -> None:
        self.settings = settings
        self.kernel = kernel
        self.models_dir = Path(settings.models_dir or home / "models").expanduser()
        self.max_concurrency = settings.slots or default_slots()
        self._models: dict[str, _Model] = {}
        self._by_path: dict[tuple[Path, float], _Model] = {}
        self._broken: dict[Path, str] = {}
        self._scan_key: tuple | None = None
        self._lock = threading.RLock()  # the catalog
        # the loaded model and its leases (see the module docstring)
        self._switch = threading.Condition()
        self._engine: BatchEngine | None = None
        self._loaded: str | None = None
        self._leases = 0
        self._switching = 0  #: switches waiting for the leases to drain
        self._loading = False

    # -- catalog ----------------------------------------------------------------

    def _files(self) -> list[Path]:
        files = sorted(self.models_dir.glob("*.gguf")) if self.models_dir.is_dir() else []
        return files + [Path(p).expanduser() for p in self.settings.model_paths]

    def _others(self) -> set[str]:
        """Model ids (and aliases) other installed backends list."""
        taken: set[str] = set()
        if self.kernel is None:
            return taken
        for backend in self.kernel.backends.values():
            if backend is self:
                continue
            with contextlib.suppress(Exception):  # their listing is their business
                for info in backend.list_models():
                    taken.add(info.id)
        return taken

    def _scan(self) -> dict[str, _Model]:
        files = self._files()
        taken = self._others()
        key = (tuple((str(p), _mtime(p)) for p in files), tuple(sorted(taken)))
        with self._lock:
            if key == self._scan_key:
                return self._models
            models: dict[str, _Model] = {}
            broken: dict[Path, str] = {}
            by_path: dict[tuple[Path, float], _Model] = {}
            for path in files:
                mtime = _mtime(path)
                known = self._by_path.get((path, mtime))
                if known is None:
                    try:
                        known = self._describe(path, mtime)
                    except (EngineError, ChatTemplateError, OSError) as exc:
                        broken[path] = str(exc)
                        if self._broken.get(path) != str(exc):  # once per change, not per request
                            log.warning("skipping model file %s: %s", path, exc)
                        continue
                by_path[(path, mtime)] = known
                model_id = model_id_for(path)
                aliases = [path.name, path.name[: -len(".gguf")]]
                if model_id in taken:  # another backend serves this id: stay apart
                    model_id += SHARED_SUFFIX
                    aliases = [aliases[1] + SHARED_SUFFIX]
                if model_id in models:  # two quantizations of one model
                    model_id = path.name[: -len(".gguf")].lower()
                known.info = known.info.model_copy(update={"id": model_id, "aliases": aliases})
                models[model_id] = known
            self._models, self._broken, self._by_path, self._scan_key = models, broken, by_path, key
            return models

    def _describe(self, path: Path, mtime: float) -> _Model:
        vocab = GGUFVocab(str(path))  # checks the header, the architecture and the tensor bounds
        try:
            template = ChatTemplate(vocab.chat_template,
                                    bos_token=vocab.text(vocab.bos_id), eos_token=vocab.text(vocab.eos_id))
        except ChatTemplateError:
            vocab.close()
            raise
        cap = self.settings.slot_context
        info = ModelInfo(
            id=model_id_for(path),
            owned_by="adyton",
            created=int(mtime),
            context_length=min(vocab.context_length or cap, cap),
            size_bytes=path.stat().st_size,
            quantization=vocab.quantization,
            path=str(path),
        )
        controls = tuple(vocab.text(i) for i in vocab.control_tokens())
        return _Model(info, path, mtime, vocab, template, tuple(t for t in controls if t))

    def list_models(self) -> list[ModelInfo]:
        return [m.info for m in self._scan().values()]

    def loaded_model(self) -> str | None:
        return self._loaded

    def _model(self, model_id: str) -> _Model:
        model = self._scan().get(model_id)
        if model is None:
            for path, reason in self._broken.items():
                if model_id in (model_id_for(path), path.name, path.name[: -len(".gguf")]):
                    raise BackendError(f"model '{model_id}': the file {path} cannot be used: {reason}")
            raise BackendError(f"model '{model_id}' is no longer installed")
        return model

    # -- loading: the lease/switch protocol ----------------------------------------

    def load_model(self, model_id: str) -> None:
        """Switch to ``model_id`` once the sequences of the current model have
        finished (new ones wait meanwhile)."""
        with self._switch:
            self._switch_to(model_id)

    def _switch_to(self, model_id: str) -> None:
        """(Holding ``_switch``.) Wait for the leases to drain, then load."""
        model = self._model(model_id)
        self._switching += 1
        try:
            # (the model may be loaded already, by another engine thread: then
            # its running sequences need not drain)
            while self._loading or (self._leases and self._loaded != model_id):
                self._switch.wait()
            if self._loaded == model_id:
                return
            self._loading = True
        finally:
            self._switching -= 1
        try:
            self._switch.release()
            try:
                self._swap(model)
            finally:
                self._switch.acquire()
        finally:
            self._loading = False
            self._switch.notify_all()

    def threads(self) -> int:
        return self.settings.threads or max(1, _usable_cores() // 2)

    def _swap(self, model: _Model) -> None:
        old, self._engine, self._loaded = self._engine, None, None
        if old is not None:
            steering.close_side_context(old)
            old.close()
        threads = self.threads()
        slot_context = model.info.context_length or self.settings.slot_context
        try:
            engine = BatchEngine(str(model.path), slots=self.max_concurrency, slot_context=slot_context,
                                 threads=threads, prefill_chunk=self.settings.prefill_chunk)
        except EngineError as exc:
            raise BackendError(f"could not load model '{model.info.id}' from {model.path}: {exc}") from exc
        self._engine, self._loaded = engine, model.info.id

    @contextlib.contextmanager
    def _lease(self, model_id: str) -> Iterator[BatchEngine]:
        """The engine with ``model_id`` loaded, held until the block ends."""
        with self._switch:
            while not (self._loaded == model_id and not self._switching and not self._loading):
                if self._loaded != model_id and not self._loading and not self._switching:
                    self._switch_to(model_id)  # another request switched away meanwhile
                    continue
                self._switch.wait()
            self._leases += 1
            engine = self._engine
        try:
            assert engine is not None
            yield engine
        finally:
            with self._switch:
                self._leases -= 1
                self._switch.notify_all()

    def close(self) -> None:
        with self._switch:
            engine, self._engine, self._loaded = self._engine, None, None
        if engine is not None:
            steering.close_side_context(engine)
            engine.close()
        with self._lock:
            for model in self._by_path.values():
                model.vocab.close()
            self._by_path, self._models, self._scan_key = {}, {}, None

    # -- requests ---------------------------------------------------------------

    def tokenize_prompt(self, model: _Model, request: GenerationRequest) -> tuple[list[int], str]:
        """The one place a request becomes tokens: the chat template's markup
        may produce control tokens, the caller's text never does."""
        vocab = model.vocab
        if request.messages is not None:
            try:
                rendered = model.template.render_request(request, model.control_texts)
            except ChatTemplateError as exc:
                raise InvalidRequest(f"the chat template of '{model.info.id}' rejected these messages: {exc}",
                                     param="messages") from None
            segments = rendered.segments()
            text = rendered.text
        else:
            text = request.prompt or ""  # a raw prompt is the caller's own markup
            segments = [(text, True)]
        ids: list[int] = []
        for piece, special in segments:
            ids += vocab.tokenize(piece, parse_special=special)
        if vocab.add_bos and vocab.bos_id >= 0 and ids[:1] != [vocab.bos_id]:
            ids.insert(0, vocab.bos_id)  # unless the template wrote it itself
        return ids, text

    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        entry = self._model(model.id)
        ids, text = self.tokenize_prompt(entry, request)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return PreparedPrompt(model=model, token_ids=ids, text=text,
                              context_length=entry.info.context_length or self.settings.slot_context)

    def has_vocabulary(self, model_id: str) -> bool:
        """True when ``vocabulary`` for this model is quick (built already)."""
        entry = self._models.get(model_id)
        return entry is not None and entry.vocabulary is not None

    def vocabulary(self, model: ModelInfo) -> Vocabulary:
        entry = self._model(model.id)
        if entry.vocabulary is None:
            # built outside the catalog lock: listing models goes on meanwhile
            vocab = entry.vocab
            eos = [vocab.eos_id] if vocab.eos_id >= 0 else []
            built = Vocabulary(
                token_bytes=vocab.token_bytes(),
                eos_token_ids=eos + [i for i in range(vocab.n_vocab) if vocab.is_eog(i) and i not in eos],
                control_token_ids=frozenset(vocab.control_tokens()),
                encode=functools.partial(vocab.tokenize, parse_special=False),
            )
            with self._lock:
                if entry.vocabulary is None:
                    entry.vocabulary = built
        return entry.vocabulary

    def generate(self, prompt: PreparedPrompt, step: StepFunction, max_tokens: int,
                 cancelled: threading.Event) -> Iterator[TokenPiece]:
        steered = prompt.steering is not None and prompt.steering.strength != 0  # 0: no vector at all
        if steered or prompt.observer is not None:
            yield from steering.generate_apart(self, prompt, step, max_tokens, cancelled)
            return
        entry = self._model(prompt.model.id)
        vocab = entry.vocab
        with self._lease(prompt.model.id) as engine:
            try:
                seq = engine.submit(prompt.token_ids)
            except EngineError as exc:
                raise BackendError(str(exc)) from exc
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            # the kernel keeps prompt + max_tokens within the context; a logits
            # processor's extra (repair) tokens must still fit the slot
            max_tokens = min(max_tokens, engine.slot_context - len(prompt.token_ids))
            try:
                for n in range(max_tokens):
                    try:
                        logits = seq.next_logits(cancelled)
                    except EngineError as exc:
                        raise BackendError(f"model '{prompt.model.id}': {exc}") from exc
                    if logits is None:
                        return
                    token = step(logits)
                    if vocab.is_eog(token):
                        yield TokenPiece(token, "", FinishReason.STOP)
                        return
                    last = n + 1 == max_tokens
                    if not last:
                        seq.push(token)  # decoded while the kernel reads this piece
                    text = decoder.decode(vocab.token_piece(token)) if 0 <= token < vocab.n_vocab else ""
                    yield TokenPiece(token, text, FinishReason.LENGTH if last else None)
            finally:
                seq.release()

    # -- embeddings -------------------------------------------------------------------

    def embedding_dimensions(self, model: ModelInfo) -> int | None:
        entry = self._scan().get(model.id)
        return entry.vocab.embedding_length if entry is not None else None

    def prepare_embeddings(self, inputs, model: ModelInfo) -> list[list[int]]:
        vocab = self._model(model.id).vocab
        out: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                ids = vocab.tokenize(item, parse_special=False)
                if vocab.add_bos and vocab.bos_id >= 0:
                    ids.insert(0, vocab.bos_id)
                out.append(ids)
            else:
                bad = next((t for t in item if not 0 <= t < vocab.n_vocab), None)
                if bad is not None:
                    raise InvalidRequest(f"input[{i}] holds the token id {bad}, outside the vocabulary "
                                         f"(0..{vocab.n_vocab - 1}) of model '{model.id}'", param="input")
                out.append(list(item))
        return out

    def embed(self, model: ModelInfo, inputs: list[list[int]], cancelled: threading.Event) -> list[np.ndarray]:
        """Mean pooling of the last hidden state over each input's tokens
        (text inputs start with the model's BOS when it adds one),
        L2-normalised, in a context of its own: the generation slots and
        their prefix caches are not touched."""
        vectors: list[np.ndarray] = []
        with self._lease(model.id) as engine:
            for ids in inputs:
                if cancelled.is_set():
                    break
                try:
                    vectors.append(engine.embed(ids))
                except EngineError as exc:
                    raise BackendError(f"model '{model.id}': {exc}") from exc
        return vectors

    # -- hidden states and steering: on a side context (see ``steering``) -------------------

    def hidden_layers(self, model: ModelInfo) -> tuple[int, int] | None:
        return steering.model_shape(self._model(model.id).vocab)

    def steering_layers(self, model: ModelInfo) -> range | None:
        shape = self.hidden_layers(model)
        return None if shape is None else range(1, shape[0])  # llama.cpp: layer 0 has no control vector

    def hidden_states(self, model: ModelInfo, inputs: list[list[int]], layers, cancelled: threading.Event):
        return steering.read_hidden_states(self, model.id, inputs, layers, cancelled)

    # -- introspection for tests and benchmarks ---------------------------------------

    @property
    def engine(self) -> BatchEngine | None:
        return self._engine


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
