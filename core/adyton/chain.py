"""The sampler chain: which logits processors and which sampler a request
gets (the ``logits_processors`` and ``sampler`` hooks; fail closed: every
constraint must be claimed by a processor), and ``_Chain``, the per-token
step function a backend calls with each token's logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import UnsupportedConstraint
from .hookspecs import Backend, LogitsProcessor, Sampler
from .plugins import resolve_all
from .sampling import log_softmax
from .types import GenerationRequest, PreparedPrompt, TokenLogprob, TopLogprob, Vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


async def sampler_chain(
    kernel: Kernel, request: GenerationRequest, backend: Backend, prepared: PreparedPrompt
) -> tuple[list[LogitsProcessor], Sampler, Vocabulary | None]:
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
    _check_claimed(request, processors)
    sampler = kernel.pm.hook.sampler(request=request, kernel=kernel)
    return processors, sampler, vocabulary


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
