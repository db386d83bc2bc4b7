"""The default sampler: used unless another plugin's ``sampler`` hook answers.
Also ``GenerationRequest.min_tokens``: end-of-sequence is banned until a
choice has that many tokens (vLLM's ``min_tokens``; stop strings still
apply), a logits processor any sampler runs after."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidRequest
from ..hookspecs import LogitsProcessor, hookimpl
from ..sampling import DefaultSampler


@hookimpl(trylast=True)
def sampler(request, kernel):
    return DefaultSampler(request)


class MinTokens(LogitsProcessor):
    name = "min_tokens"

    def __init__(self, n: int, eos_token_ids: Sequence[int]) -> None:
        self.n = n
        self._eos = np.asarray(list(eos_token_ids), dtype=np.int64)

    def process(self, generated: Sequence[int], logits: np.ndarray) -> None:
        if len(generated) < self.n:
            logits[self._eos[self._eos < logits.shape[0]]] = -np.inf


@hookimpl(trylast=True)
def logits_processors(request, model, vocabulary, kernel):
    if not request.min_tokens:
        return None
    if vocabulary is None or not vocabulary.eos_token_ids:
        raise InvalidRequest(
            f"'min_tokens' needs the end-of-sequence token of model '{model.id}', which its backend "
            "does not tell", param="min_tokens", code="unsupported_parameter")
    return MinTokens(request.min_tokens, vocabulary.eos_token_ids)
