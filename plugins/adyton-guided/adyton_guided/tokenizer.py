"""llguidance tokenizers built from the kernel's ``adyton.Vocabulary``.

The token byte strings come from the backend, control tokens are marked (the
``\\xff`` prefix llguidance uses for special tokens, plus
``special_token_ids``) and the backend's *real* encoder is handed to
llguidance: with a naive byte-wise encoder many masks come out wrong, because
llguidance re-tokenizes forced text and token-healing boundaries with it.

Building a tokenizer for a 49k vocabulary takes ~0.2 s, so each is cached:
first by the identity of the ``Vocabulary`` object (backends normally return
the same object per model), then by a fingerprint of its contents (for
backends that build a new, equal object per call).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance as llg

from adyton import Vocabulary

_MAX_ENTRIES = 8


@dataclass
class GuidedTokenizer:
    """One vocabulary, ready for llguidance."""

    key: str  #: content fingerprint (part of compiled-matcher cache keys)
    lltok: llg.LLTokenizer
    vocab_size: int
    eos_ids: tuple[int, ...]
    vocabulary: Vocabulary


class _Encoder:
    """The object ``llguidance.TokenizerWrapper`` expects."""

    def __init__(self, vocab: Vocabulary) -> None:
        control = vocab.control_token_ids
        self.eos_token_id = vocab.eos_token_ids[0] if vocab.eos_token_ids else None
        self.bos_token_id = None
        # control tokens get llguidance's special-token marker so that no
        # grammar produces them from their literal text
        self.tokens = [
            (b"\xff" + raw if i in control else raw) for i, raw in enumerate(vocab.token_bytes)
        ]
        self.special_token_ids = sorted(control)
        self._encode = vocab.encode

    def __call__(self, text: Any) -> list[int]:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        return list(self._encode(text))


def fingerprint(vocab: Vocabulary) -> str:
    h = hashlib.sha256()
    h.update(str(vocab.size).encode())
    h.update(repr(sorted(vocab.eos_token_ids)).encode())
    h.update(repr(sorted(vocab.control_token_ids)).encode())
    h.update(b"\x00".join(vocab.token_bytes))
    # include the lengths so that the join above is unambiguous
    h.update(bytes(str([len(b) for b in vocab.token_bytes]), "ascii"))
    return h.hexdigest()[:32]


class TokenizerCache:
    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, GuidedTokenizer] = OrderedDict()
        self._by_key: OrderedDict[str, GuidedTokenizer] = OrderedDict()
        self._max = max_entries

    def cached(self, vocab: Vocabulary) -> GuidedTokenizer | None:
        with self._lock:
            hit = self._by_id.get(id(vocab))
            # the entry holds a strong reference, so the id cannot be reused
            if hit is not None and hit.vocabulary is vocab:
                return hit
        return None

    def get(self, vocab: Vocabulary) -> GuidedTokenizer:
        hit = self.cached(vocab)
        if hit is not None:
            return hit
        key = fingerprint(vocab)
        with self._lock:
            hit = self._by_key.get(key)
        if hit is None:
            hit = build(vocab, key)
        with self._lock:
            self._by_key[key] = hit
            self._by_key.move_to_end(key)
            self._by_id[id(vocab)] = GuidedTokenizer(hit.key, hit.lltok, hit.vocab_size, hit.eos_ids, vocab)
            while len(self._by_key) > self._max:
                self._by_key.popitem(last=False)
            while len(self._by_id) > self._max:
                self._by_id.popitem(last=False)
            return self._by_id[id(vocab)]


def build(vocab: Vocabulary, key: str | None = None) -> GuidedTokenizer:
    if not vocab.eos_token_ids:
        raise ValueError("the backend's vocabulary names no end-of-sequence token")
    encoder = _Encoder(vocab)
    lltok = llg.LLTokenizer(
        llg.TokenizerWrapper(encoder),
        n_vocab=vocab.size,
        eos_token=list(vocab.eos_token_ids),
    )
    return GuidedTokenizer(
        key=key or fingerprint(vocab),
        lltok=lltok,
        vocab_size=vocab.size,
        eos_ids=tuple(vocab.eos_token_ids),
        vocabulary=vocab,
    )


def bytes_index(tok: GuidedTokenizer) -> dict[bytes, list[int]]:
    """Token ids by their exact bytes (control tokens left out): how repair
    finds the tokens that spell a prefix of the text closing an output.
    Built once per tokenizer (~10 ms for 49k tokens)."""
    cached = getattr(tok, "_by_bytes", None)
    if cached is None:
        control = tok.vocabulary.control_token_ids
        cached = {}
        for i, raw in enumerate(tok.vocabulary.token_bytes):
            if raw and i not in control:
                cached.setdefault(raw, []).append(i)
        tok._by_bytes = cached  # type: ignore[attr-defined]
    return cached
