"""adyton-hello: bans configured words from everything the model writes.

A plugin is a module with ``@hookimpl`` functions. This one implements two
hooks:

* ``register_settings`` declares a ``[hello]`` section in adyton.toml
  (``banned_words = ["darn", "heck"]``, or ``ADYTON_HELLO__BANNED_WORDS='["darn"]'``);
* ``logits_processors`` gives every request a processor that sets the logits
  of the banned tokens to -inf before the sampler picks a token.

A token is banned when it spells one of the words on its own (any case, with
or without a leading space). A word the tokenizer splits into several tokens
is not caught: this is an example, not a content filter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from adyton import LogitsProcessor, hookimpl


class HelloSettings(BaseModel):
    banned_words: list[str] = Field(default_factory=list, description="Words the model may not write.")


class BanWords(LogitsProcessor):
    name = "hello"

    def __init__(self, banned_ids: np.ndarray) -> None:
        self.banned_ids = banned_ids

    def process(self, generated: Sequence[int], logits: np.ndarray) -> None:
        logits[self.banned_ids] = -np.inf


def banned_token_ids(token_bytes: list[bytes], words: list[str]) -> np.ndarray:
    wanted = {w.strip().lower() for w in words if w.strip()}
    ids = [
        i for i, raw in enumerate(token_bytes)
        if raw.decode("utf-8", errors="ignore").strip().lower() in wanted
    ]
    return np.array(ids, dtype=np.int64)


@hookimpl
def register_settings(register):
    register("hello", HelloSettings)


@hookimpl
def logits_processors(request, model, vocabulary, kernel):
    words = kernel.settings.hello.banned_words
    if not words or vocabulary is None:
        return None
    ids = banned_token_ids(vocabulary.token_bytes, words)
    return BanWords(ids) if len(ids) else None
