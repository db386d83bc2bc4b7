"""``GGUFTokenizer.encode(limit=)``: a prompt far over the context is refused
with a token count instead of becoming a list of a million ids (building that
list holds the GIL for up to a second, stalling the event loop), and a huge
fragment is tokenized with the GIL released. Below the limit nothing
changes."""

from __future__ import annotations

import pytest

from adyton.testing import require_model
from adyton_llama.tokenizer import GGUFTokenizer, TooManyTokens

PROSE = "The quick brown fox jumps over the lazy dog, and then it rests a while. "


@pytest.fixture(scope="module")
def tok():
    return GGUFTokenizer.from_gguf(require_model())


def test_limit_changes_nothing_below_it(tok):
    for text in (PROSE * 3, PROSE * 400):  # the second is encoded without the GIL
        assert tok.encode(text, limit=10_000) == tok.encode(text)
        assert tok._hf.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_over_the_limit_raises_with_the_count(tok):
    text = PROSE * 400  # 28800 characters, 6400 tokens: tokenized, then refused
    exact = len(tok.encode(text))
    with pytest.raises(TooManyTokens) as caught:
        tok.encode(text, limit=exact - 1)
    assert caught.value.count == exact


def test_far_over_the_limit_is_refused_without_tokenizing(tok):
    text = PROSE * 60_000  # 4.3 MB
    with pytest.raises(TooManyTokens) as caught:
        tok.encode(text, limit=8192)
    # a lower bound: no token covers more than max_token_bytes characters
    assert caught.value.count == -(-len(text) // tok.max_token_bytes) > 8192
    assert tok.max_token_bytes == max(len(b) for b in tok.token_bytes())
