"""The logits processor that enforces one compiled constraint.

Per token, on the engine thread: ``process`` applies the llguidance token
mask (a packed bitmask unpacked with numpy) by setting every forbidden logit
to -inf; ``accept`` advances the matcher with the sampled token. Once the
matcher is stopped (or in an error state) only end-of-sequence is allowed.

Mask prefetch: after ``accept`` the next mask is computed on a helper
thread while the backend runs its next forward pass (llguidance releases the
GIL while it computes), and ``process`` only waits for it. Every other
matcher call first waits for a pending computation (the matcher is not
re-entrant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from adyton import Constraint, FinishReason, LogitsProcessor

from . import verify
from .compile import Compiled
from .tokenizer import GuidedTokenizer, bytes_index

log = logging.getLogger("adyton.guided")

_executor: ThreadPoolExecutor | None = None


def _mask_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adyton-guided-mask")
    return _executor


class JsonTail:
    """Where a JSON prefix stands, fed byte by byte: inside a string (and an
    escape)? which brackets are open? ``completion()`` is the shortest text
    that closes it syntactically (the constraint may still want more first:
    a required key, a string's minLength)."""

    __slots__ = ("escape", "in_string", "stack", "unicode_left")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.stack: list[int] = []
        self.in_string = False
        self.escape = False
        self.unicode_left = 0

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_string:
                if self.unicode_left:
                    self.unicode_left -= 1
                elif self.escape:
                    self.escape = False
                    if b == 0x75:  # \uXXXX
                        self.unicode_left = 4
                elif b == 0x5C:  # backslash
                    self.escape = True
                elif b == 0x22:
                    self.in_string = False
            elif b == 0x22:
                self.in_string = True
            elif b in (0x7B, 0x5B):
                self.stack.append(b)
            elif b in (0x7D, 0x5D) and self.stack:
                self.stack.pop()

    def completion(self) -> bytes:
        out = bytearray()
        if self.in_string:
            if self.unicode_left:
                out += b"0" * self.unicode_left
            elif self.escape:
                out += b'"'  # the escape \" ...
            out += b'"'  # ... then the closing quote
        out += bytes(0x7D if b == 0x7B else 0x5D for b in reversed(self.stack))
        return bytes(out)


class GuidedProcessor(LogitsProcessor):
    name = "guided"

    def __init__(
        self,
        constraint: Constraint,
        compiled: Compiled,
        tok: GuidedTokenizer,
        *,
        max_tokens: int | None,
        verifiers: Sequence[str],
        repair: bool,
        repair_budget: int,
        prefetch: bool = True,
        quiet: bool = False,
    ) -> None:
        self.constraint = constraint
        #: a helper the request did not ask for (tool calls in "auto" mode):
        #: no header, no report
        self.quiet = quiet
        self.handles = (constraint,)
        self.compiled = compiled
        self.tok = tok
        self.max_tokens = max_tokens
        self.verifiers = list(verifiers)
        self.repair = repair
        self.extra_tokens = repair_budget if repair else 0
        self.prefetch = prefetch
        self._vocab = tok.vocab_size
        self._eos = np.asarray(tok.eos_ids, dtype=np.int64)
        self._bitmask = np.full((self._vocab + 31) // 32, -1, dtype=np.int32)
        kind_is_json = constraint.kind in ("json_schema", "json_object")
        self._by_bytes = bytes_index(tok) if repair and kind_is_json else None
        self._tail = JsonTail() if repair and kind_is_json else None
        self._matcher = compiled.template.deep_copy()
        self._pending: Future[None] | None = None
        self._count = 0
        self._error: str | None = None

    # -- the matcher, possibly busy on the helper thread ------------------------

    def _fill(self) -> None:
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)

    def _settle(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.result()

    def _schedule(self) -> None:
        if self.prefetch:
            self._pending = _mask_executor().submit(self._fill)
        else:
            self._pending = None

    # -- LogitsProcessor ----------------------------------------------------------

    def reset(self) -> None:
        self._settle()
        self._matcher = self.compiled.template.deep_copy()
        self._count = 0
        self._error = None
        if self._tail is not None:
            self._tail.reset()
        self._schedule()

    def process(self, generated: Sequence[int], logits: np.ndarray) -> None:
        if self._pending is not None:
            self._settle()
        else:
            self._fill()
        m = self._matcher
        n = logits.shape[0]
        if m.is_error() or m.is_stopped():
            if m.is_error() and self._error is None:
                self._error = m.get_error()
                log.warning("guided decoding entered an error state: %s", self._error)
            self._only_eos(logits)
            return
        vocab = min(n, self._vocab)
        allowed = np.unpackbits(self._bitmask.view(np.uint8), count=vocab, bitorder="little").view(bool)
        head = logits[:vocab]
        if self.repair and self.max_tokens is not None and self._count >= self.max_tokens:
            allowed = self._repair_mask(allowed)
        np.copyto(head, -np.inf, where=~allowed)
        if n > vocab:
            logits[vocab:] = -np.inf
        if not allowed.any():  # cannot happen unless the matcher is broken
            self._only_eos(logits)

    def _repair_mask(self, allowed: np.ndarray) -> np.ndarray:
        """Past max_tokens: end now if the output is complete; else, for
        JSON, only the tokens that spell the start of the text closing it
        (the open string, then the open brackets), whenever the constraint
        allows one of them; else whatever the constraint allows (a required
        key, a string's minLength, the rest of a literal)."""
        eos = self._eos[self._eos < allowed.shape[0]]
        if allowed[eos].any():
            only = np.zeros_like(allowed)
            only[eos] = allowed[eos]
            return only
        by_bytes = self._by_bytes  # made with the tail (repair of JSON)
        if self._tail is None or by_bytes is None:
            return allowed
        closing = self._tail.completion()
        ids = [i for n in range(1, len(closing) + 1)
               for i in by_bytes.get(closing[:n], ()) if i < allowed.shape[0] and allowed[i]]
        if not ids:
            return allowed
        only = np.zeros_like(allowed)
        only[ids] = True
        return only

    def _only_eos(self, logits: np.ndarray) -> None:
        eos = self._eos[self._eos < logits.shape[0]]
        keep = logits[eos].copy()
        logits[:] = -np.inf
        logits[eos] = np.where(np.isfinite(keep), keep, 0.0)

    def accept(self, token_id: int) -> None:
        self._settle()
        if token_id not in self.tok.eos_ids:
            self._count += 1  # (tokens of the output, which end-of-sequence is not)
            if self._tail is not None and token_id < len(self.tok.vocabulary.token_bytes):
                self._tail.feed(self.tok.vocabulary.token_bytes[token_id])
        m = self._matcher
        if m.is_stopped():
            return
        if not m.consume_token(token_id):
            if self._error is None:
                self._error = m.get_error() or f"token {token_id} was not allowed"
            return
        if not m.is_stopped():
            self._schedule()

    def is_complete(self) -> bool:
        self._settle()
        m = self._matcher
        if m.is_error() or not m.is_accepting():
            return False
        # Past max_tokens with a finished output repair allows only
        # end-of-sequence: let the engine emit it (one more step, inside the
        # repair budget) so that the choice ends with finish_reason "stop"
        # rather than "length".
        return not (self.repair and self.max_tokens is not None and self._count >= self.max_tokens)

    def response_headers(self) -> dict[str, str]:
        return {} if self.quiet else {"x-adyton-guided": "enforced"}

    # -- after the choice -------------------------------------------------------------

    def _text_accepted(self, text: str) -> tuple[bool, str | None]:
        m = self.compiled.template.deep_copy()
        try:
            ids = self.tok.vocabulary.encode(text)
        except Exception as exc:  # noqa: BLE001
            return False, f"the output could not be tokenized: {exc}"
        if ids and not m.consume_tokens(list(ids)):
            return False, "the output does not match the constraint"
        if not m.is_accepting():
            return False, "the output is incomplete"
        return True, None

    def report(self, text: str, finish_reason: FinishReason) -> dict[str, Any] | None:
        if self.quiet:
            return None
        self._settle()
        m = self._matcher
        complete = not m.is_error() and m.is_accepting()
        kind = self.constraint.kind
        results: dict[str, dict[str, Any]] = {}
        parsed: Any = None
        syntax_ok = False
        if kind in ("json_schema", "json_object"):
            results_syntax, parsed = verify.check_json(text, want_object=kind == "json_object")
            syntax_ok = results_syntax["passed"]
        else:
            ok, why = self._text_accepted(text)
            if ok and kind == "choice" and text not in self.constraint.value:
                ok, why = False, "the output is not one of the choices"
            results_syntax = {"passed": ok} if ok else {"passed": False, "error": why}
            syntax_ok = ok
        if "syntax" in self.verifiers:
            results["syntax"] = results_syntax
        if "json_schema" in self.verifiers and kind == "json_schema":
            if syntax_ok:
                validator = verify.schema_validator(self.compiled.hash, self.constraint.value)
                results["json_schema"] = verify.check_schema(validator, parsed)
            else:
                results["json_schema"] = {"passed": False, "error": "not checked: the output is not valid JSON"}
        accepted = syntax_ok and all(r["passed"] for r in results.values())
        report: dict[str, Any] = {
            "enforced": True,
            "constraint": kind,
            "source": self.constraint.source,
            "accepted": accepted,
            "complete": complete,
            "verifiers": results,
        }
        if self.repair:
            over = max(0, self._count - (self.max_tokens or self._count))
            report["repair"] = {"used": over > 0, "extra_tokens": over, "budget": self.extra_tokens}
        if self._error:
            report["error"] = self._error.splitlines()[0]
        return report
