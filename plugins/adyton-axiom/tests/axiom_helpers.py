"""Helpers shared by the Axiom tests (a module of its own: the name
``conftest`` is taken by the kernel's tests too)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from adyton.testing import ScriptedBackend

#: a well-formed account number (no account needs to exist without adyton-limits)
ACCOUNT = "1234567890" * 6 + "1234"
assert len(ACCOUNT) == 64


class RoutedBackend(ScriptedBackend):
    """A scripted backend whose reply depends on the prompt: for each call,
    the first ``(marker, replies)`` whose marker occurs in the rendered
    prompt answers with its next reply (the last one repeats). Each reply is
    one token, so any text (JSON included) comes back verbatim."""

    def __init__(self, routes: Sequence[tuple[str, Sequence[str]]], default: str = "OK", **kwargs) -> None:
        replies = [r for _, rs in routes for r in rs] + [default]
        super().__init__(script=[default], extra_vocab=replies, **kwargs)
        self.routes = [(marker, list(rs)) for marker, rs in routes]
        self.default = default
        self.calls: dict[str, int] = {}
        self._route_lock = threading.Lock()

    def generate(self, prompt, step, max_tokens, cancelled):
        with self._route_lock:
            reply = self.default
            for marker, replies in self.routes:
                if marker in prompt.text:
                    n = self.calls.get(marker, 0)
                    self.calls[marker] = n + 1
                    reply = replies[min(n, len(replies) - 1)]
                    break
            self.script = [reply]
        return super().generate(prompt, step, max_tokens, cancelled)


def chat_body(content: str = "hi", *, model: str = "scripted-model", session_id: str | None = ACCOUNT,
              system_prompt: str | None = None, **extra) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": content}]}
    if session_id is not None:
        body["sessionId"] = session_id
    if system_prompt is not None:
        body["system_prompt"] = system_prompt
    body.update(extra)
    return body
