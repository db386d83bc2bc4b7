"""The ``llama`` backend: GGUF files on the CPU through ctransformers.

Models are the ``*.gguf`` files under ``$ADYTON_HOME/models`` (and the extra
paths in ``[llama] model_paths``). One is loaded at a time; the kernel
switches models on the engine thread when a request names another one.
Tokenizing and detokenizing happen in Python (``tokenizer``), chat templates
in the kernel's one renderer (``adyton.ChatTemplate``); the engine only evaluates tokens and hands the raw
logits to the kernel's sampler chain.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from adyton import (
    Backend,
    BackendError,
    ChatTemplate,
    ChatTemplateError,
    ContextTooLong,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    PreparedPrompt,
    StepFunction,
    TokenPiece,
    Vocabulary,
)

from .compat import check_legacy_support
from .engine import EngineError, LlamaEngine
from .gguf import GGUFError, GGUFFile, read_gguf
from .tokenizer import GGUFTokenizer, TokenizerError, TooManyTokens

log = logging.getLogger("adyton.llama")

# GGUF general.file_type -> llama.cpp quantization name
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
}
_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d[\w]*|f16|f32|bf16)$", re.IGNORECASE)


class LlamaSettings(BaseModel):
    """The ``[llama]`` settings section."""

    models_dir: Path | None = Field(None, description="Where *.gguf models live (default: $ADYTON_HOME/models).")
    model_paths: list[Path] = Field(default_factory=list, description="Extra GGUF files to serve.")
    max_context: int = Field(2048, ge=64, description="Cap on the context window (the KV cache grows with it).")
    threads: int | None = Field(None, ge=1,
                                description="CPU threads per engine call. Default: up to all usable cores, tuned by "
                                            "measured speed (fewer when other processes compete for the cores).")
    batch_size: int = Field(128, ge=32, le=512, description="Prompt tokens evaluated per batch while prefilling.")
    embedding_pooling: Literal["mean", "last"] = Field(
        "mean", description="/v1/embeddings: 'mean' averages the final hidden state of every input token "
        "(one engine call per token); 'last' takes the last token's after one batched prefill "
        "(faster on long inputs, worse at telling texts apart). Vectors are L2-normalised either way.")


@dataclass
class _Model:
    """What the backend knows about one file, read from its header only."""

    info: ModelInfo
    path: Path
    mtime: float
    tokenizer: GGUFTokenizer | None = None
    template: ChatTemplate | None = None
    #: why the tokenizer cannot be read (kept: the same file fails the same way)
    tokenizer_error: str | None = None
    vocabulary: Vocabulary | None = None
    #: the hidden state size (``<arch>.embedding_length``), read on first use
    embedding_length: int | None = None
    #: held while the tokenizer is read (not the catalog lock: listing goes on)
    reading: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


def model_id_for(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.stem
    return _QUANT_SUFFIX.sub("", stem).lower() or stem.lower()


class LlamaBackend(Backend):
    name = "llama"
    max_concurrency = 1

    def __init__(self, settings: LlamaSettings, home: Path) -> None:
        self.settings = settings
        self.models_dir = Path(settings.models_dir or home / "models").expanduser()
        self.compat_dir = home / "cache" / "gguf-compat"
        self._models: dict[str, _Model] = {}
        #: files skipped by the last scan: path -> why (named again when asked for)
        self._broken: dict[Path, str] = {}
        self._scan_key: tuple | None = None
        self._lock = threading.RLock()  # guards the catalog and lazy vocabularies
        self._engine: LlamaEngine | None = None
        self._loaded: str | None = None

    # -- catalog ----------------------------------------------------------------

    def _files(self) -> list[Path]:
        files = sorted(self.models_dir.glob("*.gguf")) if self.models_dir.is_dir() else []
        files += [Path(p).expanduser() for p in self.settings.model_paths]
        return files

    def _scan(self) -> dict[str, _Model]:
        files = self._files()
        key = tuple((str(p), _mtime(p)) for p in files)
        with self._lock:
            if key == self._scan_key:
                return self._models
            models: dict[str, _Model] = {}
            broken: dict[Path, str] = {}
            for path in files:
                mtime = _mtime(path)
                known = next((m for m in self._models.values() if m.path == path and m.mtime == mtime), None)
                if known is None:
                    try:
                        info = _describe(path)
                        cap = self.settings.max_context
                        info.context_length = min(info.context_length or cap, cap)
                        known = _Model(info, path, mtime)
                    except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others
                        reason = exc.reason if isinstance(exc, GGUFError) else f"{type(exc).__name__}: {exc}"
                        broken[path] = reason
                        if self._broken.get(path) != reason:  # warn once per change, not per request
                            log.warning("skipping model file %s: %s", path, reason)
                        continue
                model_id = known.info.id
                if model_id in models:  # two quantizations of one model: keep both apart
                    model_id = path.name[: -len(".gguf")].lower()
                    known.info = known.info.model_copy(update={"id": model_id})
                models[model_id] = known
            self._models, self._broken, self._scan_key = models, broken, key
            return models

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

    def _tokenizer(self, model: _Model) -> tuple[GGUFTokenizer, ChatTemplate]:
        """The model's tokenizer and chat template, read from its file the
        first time (~0.5 s for a 49k vocabulary: see ``read_tokenizer``)."""
        if model.tokenizer is None:
            with model.reading:
                if model.tokenizer is None and model.tokenizer_error is None:
                    try:
                        meta = read_gguf(model.path)
                        model.template = ChatTemplate.from_metadata(meta)
                        model.tokenizer = GGUFTokenizer(meta)
                    except OSError as exc:  # perhaps passing: read again next time
                        raise BackendError(f"cannot read the tokenizer of {model.path}: {exc}") from exc
                    except (GGUFError, TokenizerError, ChatTemplateError) as exc:
                        model.tokenizer_error = f"cannot read the tokenizer of {model.path}: {exc}"
                if model.tokenizer_error is not None:
                    raise BackendError(model.tokenizer_error)
        return model.tokenizer, model.template  # type: ignore[return-value]

    def has_tokenizer(self, model_id: str) -> bool:
        """True when ``prepare`` for this model will not read a tokenizer
        first (it was read, or is known to be unreadable)."""
        model = self._models.get(model_id)
        return model is not None and (model.tokenizer is not None or model.tokenizer_error is not None)

    def read_tokenizer(self, model_id: str) -> None:
        """Read the model's tokenizer now. Blocking: the plugin's
        ``prepare_request`` hook runs it in a worker thread before the kernel
        calls ``prepare`` on the event loop. Errors are left for ``prepare``."""
        with contextlib.suppress(BackendError):
            self._tokenizer(self._model(model_id))

    # -- loading ----------------------------------------------------------------

    def load_model(self, model_id: str) -> None:
        model = self._model(model_id)
        self._tokenizer(model)  # fail before dropping the current model
        engine = self._engine
        if engine is None:
            engine = self._engine = LlamaEngine(
                max_ctx=self.settings.max_context,
                threads=self.settings.threads,
                batch_size=self.settings.batch_size,
                compat_dir=self.compat_dir,
            )
        previous = self._loaded
        self._loaded = None
        try:
            engine.load(model.path)
        except (EngineError, GGUFError, OSError) as exc:
            # the engine checks the file before dropping the current model
            if engine.loaded and previous is not None:
                self._loaded = previous
            reason = exc.reason if isinstance(exc, GGUFError) else str(exc)
            if str(model.path) not in reason:
                reason = f"{model.path}: {reason}"
            raise BackendError(f"could not load model '{model_id}' from {reason}") from exc
        self._loaded = model_id

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._loaded = None

    # -- requests ---------------------------------------------------------------

    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        entry = self._model(model.id)
        tokenizer, template = self._tokenizer(entry)
        if request.messages is not None:
            try:
                rendered = template.render_request(request, tokenizer.control_texts)
            except ChatTemplateError as exc:
                raise InvalidRequest(f"the chat template of '{model.id}' rejected these messages: {exc}",
                                     param="messages") from None
            # caller text is tokenized as text: it never produces control tokens
            segments = rendered.segments()
            text = rendered.text
        else:
            text = request.prompt or ""  # a raw prompt is the caller's own markup
            segments = [(text, True)]
        context = entry.info.context_length or self.settings.max_context
        ids = tokenizer.encode("", add_bos=tokenizer.add_bos_token)
        for piece, special in segments:
            try:
                ids += tokenizer.encode(piece, parse_special=special, limit=context - len(ids))
            except TooManyTokens as exc:  # far over the context: no need for the ids
                raise ContextTooLong(
                    f"the prompt is at least {len(ids) + exc.count} tokens; the context of model "
                    f"'{model.id}' is {context} tokens",
                    param="messages" if request.messages is not None else "prompt") from None
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return PreparedPrompt(model=model, token_ids=ids, text=text, context_length=context)

    def vocabulary(self, model: ModelInfo) -> Vocabulary:
        entry = self._model(model.id)
        tokenizer, _ = self._tokenizer(entry)
        with self._lock:
            if entry.vocabulary is None:
                eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
                eos += sorted(i for i in tokenizer.eos_ids if i not in eos)
                entry.vocabulary = Vocabulary(
                    token_bytes=tokenizer.token_bytes(),
                    eos_token_ids=eos,
                    control_token_ids=frozenset(tokenizer.control_token_ids),
                    encode=functools.partial(tokenizer.encode, parse_special=False),
                )
            return entry.vocabulary

    def generate(self, prompt: PreparedPrompt, step: StepFunction, max_tokens: int,
                 cancelled: threading.Event) -> Iterator[TokenPiece]:
        engine = self._engine
        if engine is None or self._loaded != prompt.model.id:
            raise BackendError(f"model '{prompt.model.id}' is not loaded")
        tokenizer, _ = self._tokenizer(self._model(prompt.model.id))
        detok = tokenizer.detokenizer()
        tokens = engine.generate(prompt.token_ids, step, max_tokens,
                                 should_stop=cancelled.is_set, stop_ids=tokenizer.eos_ids)
        try:
            for token in tokens:
                yield TokenPiece(token, detok.push(token))
        except EngineError as exc:
            raise BackendError(str(exc)) from exc
        finally:
            tokens.close()
        # Every piece is a token to the kernel, but for the text-less end of
        # sequence. Bytes the detokenizer still holds here begin a character
        # that no token completed: they are no text (what stopping at max_tokens
        # does too, where the kernel closes this generator).
        if detok.pending_bytes:
            log.debug("generation ended inside a character: dropped %r", detok.pending_bytes)
        if engine.finish_reason == "stop":
            yield TokenPiece(tokenizer.eos_id if tokenizer.eos_id is not None else -1, "", FinishReason.STOP)


    # -- embeddings -------------------------------------------------------------

    def embedding_dimensions(self, model: ModelInfo) -> int | None:
        entry = self._model(model.id)
        if entry.embedding_length is None:
            try:
                meta = read_gguf(entry.path)
                size = meta.get(f"{meta.architecture}.embedding_length")
            except (GGUFError, OSError) as exc:
                raise BackendError(f"cannot read the header of {entry.path}: {exc}") from exc
            entry.embedding_length = int(size) if size else 0
        return entry.embedding_length or None

    def prepare_embeddings(self, inputs, model: ModelInfo) -> list[list[int]]:
        entry = self._model(model.id)
        tokenizer, _ = self._tokenizer(entry)
        vocab = tokenizer.vocab_size
        context = entry.info.context_length or self.settings.max_context
        out: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):  # text as text: no control tokens, no chat template
                try:
                    out.append(tokenizer.encode(item, parse_special=False, add_bos=tokenizer.add_bos_token,
                                                limit=context))
                except TooManyTokens as exc:  # far over the context: no need for the ids
                    raise ContextTooLong(f"input {i} is at least {exc.count} tokens; the context of model "
                                         f"'{model.id}' is {context} tokens", param="input") from None
                continue
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(f"input[{i}] holds the token id {bad}, outside the vocabulary of "
                                     f"'{model.id}' (0..{vocab - 1})", param="input")
            out.append(list(item))
        return out

    def embed(self, model: ModelInfo, inputs: list[list[int]], cancelled: threading.Event) -> list[np.ndarray]:
        engine = self._engine
        if engine is None or self._loaded != model.id:
            raise BackendError(f"model '{model.id}' is not loaded")
        vectors: list[np.ndarray] = []
        for ids in inputs:
            if cancelled.is_set():
                break
            try:
                pooled = engine.embed(ids, self.settings.embedding_pooling, cancelled.is_set)
            except EngineError as exc:
                raise BackendError(str(exc)) from exc
            if pooled is None:
                break
            norm = float(np.linalg.norm(pooled))
            vectors.append(pooled / norm if norm > 0 else pooled)
        return vectors


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _describe(path: Path) -> ModelInfo:
    meta: GGUFFile = read_gguf(path)  # checks that every tensor lies inside the file
    check_legacy_support(meta)  # an architecture the engine cannot run is not listed
    arch = meta.architecture
    ctx = meta.get(f"{arch}.context_length")
    file_type = meta.get("general.file_type")
    quant = _FILE_TYPES.get(int(file_type)) if file_type is not None else None
    if quant is None:
        match = _QUANT_SUFFIX.search(path.name[: -len(".gguf")])
        quant = match.group(0)[1:].upper() if match else None
    stat = path.stat()
    return ModelInfo(
        id=model_id_for(path),
        owned_by="adyton",
        created=int(stat.st_mtime),
        context_length=int(ctx) if ctx is not None else None,
        size_bytes=stat.st_size,
        quantization=quant,
        path=str(path),
        aliases=[path.name, path.name[: -len(".gguf")]],
    )
