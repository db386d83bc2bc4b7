"""The kernel's default sampler and the stop-string matcher.

Both run on the engine's worker thread, once per generated token, so they are
written for numpy speed: greedy decoding is one ``argmax`` on the logits the
backend hands over, and nucleus sampling sorts only the head of the
distribution unless it has to.
"""

from __future__ import annotations

import numpy as np

from .hookspecs import Sampler
from .types import GenerationRequest

_NO_IDS = np.zeros(0, dtype=np.int64)
_NO_VALUES = np.zeros(0, dtype=np.float32)


class DefaultSampler(Sampler):
    """Chooses a token from a logits vector.

    Order of operations: logit bias, the repetition penalty (HF/vLLM: a
    generated token's positive logit is divided by it, a negative one
    multiplied), presence/frequency penalties, then
    (unless temperature is 0: greedy) temperature, top_k, top_p, min_p, and a
    draw from a ``numpy.random.Generator`` seeded with ``seed`` — the same seed
    on the same model gives the same tokens.
    """

    #: how many of the most likely tokens nucleus sampling looks at first
    _HEAD = 512

    def __init__(self, request: GenerationRequest, seed: int | None = None) -> None:
        self.temperature = request.temperature
        self.top_k = request.top_k
        self.top_p = request.top_p
        self.min_p = request.min_p
        self.presence_penalty = request.presence_penalty
        self.frequency_penalty = request.frequency_penalty
        self.repetition_penalty = request.repetition_penalty
        bias = request.logit_bias
        if bias:
            self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
            self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        else:
            self._bias_ids, self._bias_values = _NO_IDS, _NO_VALUES
        self.reset(seed if seed is not None else request.seed)

    def reset(self, seed: int | None) -> None:
        """Start a new choice: new random stream, no token counts."""
        self._seed = seed
        self._rng_state: np.random.Generator | None = None  # made on first draw
        self._counts: dict[int, int] = {}

    @property
    def _rng(self) -> np.random.Generator:
        if self._rng_state is None:
            self._rng_state = np.random.default_rng(self._seed)
        return self._rng_state

    @property
    def modifies_logits(self) -> bool:  # type: ignore[override]
        """Only with a logit bias or a penalty: greedy and plain sampling
        read the backend's logits as they are."""
        return bool(
            len(self._bias_ids) or self.presence_penalty or self.frequency_penalty
            or self.repetition_penalty != 1.0
        )

    def adjust(self, logits: np.ndarray) -> None:
        """Apply logit bias and penalties in place."""
        if len(self._bias_ids):
            valid = self._bias_ids < logits.shape[0]
            logits[self._bias_ids[valid]] += self._bias_values[valid]
        if not self._counts:
            return
        repetition = self.repetition_penalty != 1.0
        if repetition or self.presence_penalty or self.frequency_penalty:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            if repetition:
                seen = logits[ids]
                logits[ids] = np.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
            if self.presence_penalty or self.frequency_penalty:
                counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
                logits[ids] -= self.presence_penalty + self.frequency_penalty * counts

    def choose(self, logits: np.ndarray) -> int:
        """Pick the next token from (already adjusted) logits."""
        token = int(logits.argmax()) if self.temperature == 0.0 else self._draw(logits)
        self._counts[token] = self._counts.get(token, 0) + 1
        return token

    def _draw(self, logits: np.ndarray) -> int:
        x = logits.astype(np.float64) / self.temperature
        top = np.max(x)
        if not np.isfinite(top):
            return int(np.argmax(logits))
        weights = np.exp(x - top)
        n = weights.shape[0]
        if self.top_k <= 0 and self.top_p >= 1.0 and self.min_p <= 0.0:
            return int(self._rng.choice(n, p=weights / weights.sum()))
        if 0 < self.top_k < n:
            ids = _top_ids(x, self.top_k)
            probs = weights[ids] / weights[ids].sum()
        else:
            total = weights.sum()
            ids = _top_ids(x, min(self._HEAD, n))
            probs = weights[ids] / total
            if self.top_p < 1.0 and probs.sum() < self.top_p and len(ids) < n:
                # the nucleus is wider than the head: widen to the whole vocabulary
                ids = _top_ids(x, n)
                probs = weights[ids] / total
        keep = len(ids)
        if self.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1)
        if self.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= self.min_p * probs[0]).sum())))
        probs = probs[:keep]
        return int(ids[self._rng.choice(keep, p=probs / probs.sum())])


def _top_ids(x: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest values, largest first (ties by id)."""
    n = x.shape[0]
    ids = np.arange(n) if k >= n else np.argpartition(-x, k - 1)[:k]
    return ids[np.argsort(-x[ids], kind="stable")]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = np.max(x)
    return x - top - np.log(np.exp(x - top).sum())


class StopMatcher:
    """Finds stop strings in streamed text, even when split across tokens.

    ``feed`` returns the text that is safe to emit now and whether a stop
    string was hit; text that could be the start of a stop string is held
    back until it is known not to be. The stop string itself is never
    emitted, not even partly.
    """

    __slots__ = ("_buffer", "_hold", "stops")

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._buffer = ""
        self._hold = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self._buffer += text
        buffer = self._buffer
        first = -1
        for stop in self.stops:
            i = buffer.find(stop)
            if i != -1 and (first == -1 or i < first):
                first = i
        if first != -1:
            self._buffer = ""
            return buffer[:first], True
        # hold back the longest tail that is a prefix of some stop string
        keep = 0
        for length in range(min(self._hold - 1, len(buffer)), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                keep = length
                break
        if keep:
            self._buffer = buffer[-keep:]
            return buffer[:-keep], False
        self._buffer = ""
        return buffer, False

    def flush(self) -> str:
        text, self._buffer = self._buffer, ""
        return text


#: longest repeated n-gram (in tokens) ``RepetitionGuard`` looks for
REPETITION_MAX_PERIOD = 64
#: fewest tokens a repetition must span before it ends a choice (so a short
#: legitimate repeat, "ha ha ha" or a row of "=", is left alone)
REPETITION_MIN_SPAN = 32


class RepetitionGuard:
    """Notices a choice stuck in a loop: its tokens end in one n-gram
    (1 <= n <= ``REPETITION_MAX_PERIOD``) repeated ``repeats`` times,
    spanning at least ``REPETITION_MIN_SPAN`` tokens.

    ``feed(token)`` per token, O(max period) each: for every period n it
    keeps how many consecutive recent tokens equal the token n places
    earlier; the tail is periodic with period n over that run plus n."""

    __slots__ = ("_runs", "_tokens", "repeats")

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self._tokens: list[int] = []
        self._runs = [0] * (REPETITION_MAX_PERIOD + 1)

    def feed(self, token: int) -> bool:
        """Add ``token``; True when the output is now a degenerate loop."""
        tokens = self._tokens
        tokens.append(token)
        size = len(tokens)
        runs = self._runs
        looping = False
        for n in range(1, min(REPETITION_MAX_PERIOD, size - 1) + 1):
            if tokens[-1 - n] == token:
                runs[n] += 1
                span = runs[n] + n
                if span >= n * self.repeats and span >= REPETITION_MIN_SPAN:
                    looping = True
            else:
                runs[n] = 0
        return looping
