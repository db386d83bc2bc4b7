"""Render chat prompts with the GGUF's own ``tokenizer.chat_template``.

Templates come from model files, i.e. untrusted input: they are rendered in a
Jinja2 ``ImmutableSandboxedEnvironment`` with the conventions of HF
``apply_chat_template`` / llama-cpp-python (``trim_blocks``, ``lstrip_blocks``,
loop controls, ``raise_exception``, ``tojson``, ``strftime_now``).

One renderer serves every local backend: a backend builds it from its model
file's metadata (``ChatTemplate.from_metadata``) and renders with
``render_protected``, which keeps caller text from producing control tokens.

Role injection: a chat template writes its markup (``<|im_start|>system``)
as text, and backends tokenize the rendered prompt with special-token
parsing on, so that markup becomes control tokens. Caller-supplied text
(message contents, tool arguments, tool descriptions ...) must never do the
same: a user message containing ``<|im_start|>system`` would otherwise open
a real system turn. ``render_protected`` therefore replaces each control
token's spelling inside caller strings with a one-off marker before
rendering, and ``RenderedPrompt.segments()`` hands the backend the rendered
text cut at those markers: template text to tokenize with special parsing,
the caller's spellings to tokenize as plain text. A prompt whose caller text
holds no control-token spelling is one segment, tokenized exactly as before.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .tools import chat_context

if TYPE_CHECKING:  # pragma: no cover
    from .types import GenerationRequest

#: used when the GGUF carries no template
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: refuse to render absurdly large outputs (a hostile template could loop)
MAX_OUTPUT_CHARS = 4_000_000


class ChatTemplateError(Exception):
    """The template is invalid, raised an exception, or broke the sandbox rules."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(str(message))


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # HF's variant: keeps non-ASCII as is (jinja's default escapes HTML chars)
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A rendered chat prompt whose caller text is kept apart from its markup.

    ``text`` is what the model reads (markers restored). Tokenize it with
    ``segments()``: ``[(text, parse_special), ...]``, in order."""

    marked: str
    escapes: Mapping[str, str]

    @property
    def text(self) -> str:
        return "".join(part for part, _ in self.segments())

    def segments(self) -> list[tuple[str, bool]]:
        """The prompt as pieces to tokenize in order: ``(piece, True)`` is
        template text (control tokens written in it are parsed), ``(piece,
        False)`` a control token's spelling that came from the caller (plain
        text)."""
        if not self.escapes:
            return [(self.marked, True)]
        out: list[tuple[str, bool]] = []
        rest = self.marked
        while rest:
            start = rest.find(_MARK_OPEN)
            end = rest.find(_MARK_CLOSE, start + 1) if start >= 0 else -1
            if start < 0 or end < 0:
                out.append((rest, True))
                break
            marker = rest[start:end + 1]
            original = self.escapes.get(marker)
            if original is None:  # not ours (a template's own private-use text)
                out.append((rest[:end + 1], True))
            else:
                if start:
                    out.append((rest[:start], True))
                out.append((original, False))
            rest = rest[end + 1:]
        merged: list[tuple[str, bool]] = []
        for piece, special in out:
            if merged and merged[-1][1] == special:
                merged[-1] = (merged[-1][0] + piece, special)
            else:
                merged.append((piece, special))
        return merged


# private-use code points around a one-off nonce: markers templates pass through
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"


class _Escaper:
    """Replaces control-token spellings in caller strings with markers."""

    def __init__(self, control_tokens: Collection[str]) -> None:
        # longest first, so a token that contains another is replaced whole
        self.tokens = sorted((t for t in control_tokens if t), key=len, reverse=True)
        self.first_chars = frozenset(t[0] for t in self.tokens)
        self.nonce = secrets.token_hex(6)
        self.escapes: dict[str, str] = {}

    def text(self, value: str) -> str:
        if not self.first_chars.intersection(value):
            return value
        for token in self.tokens:
            if token in value:
                marker = f"{_MARK_OPEN}{self.nonce}.{len(self.escapes)}{_MARK_CLOSE}"
                self.escapes[marker] = token
                value = value.replace(token, marker)
        return value

    def walk(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            return value if key == "role" else self.text(value)
        if isinstance(value, Mapping):
            return {k: self.walk(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.walk(v) for v in value]
        return value


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may use."""

    def __init__(self, source: str | None = None, *, bos_token: str = "", eos_token: str = ""):
        self.is_fallback = not source
        self.source: str = source or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._env = _make_env()
        try:
            self._template = self._env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"invalid chat template: {e}") from e

    @classmethod
    def from_metadata(cls, meta: Any, tokens: Sequence[str] | None = None) -> ChatTemplate:
        """Template of a GGUF (``tokenizer.chat_template``; ChatML if absent), with
        ``bos_token``/``eos_token`` texts taken from its vocabulary.

        ``meta``: anything with ``.get(key)`` over the GGUF's key/value metadata
        (adyton-llama's GGUF reader, or llama-cpp-python's ``metadata`` dict,
        whose values are strings). ``tokens``: the vocabulary's token texts, if
        ``meta`` does not carry ``tokenizer.ggml.tokens``."""
        source = meta.get("tokenizer.chat_template")
        if tokens is None:
            tokens = meta.get("tokenizer.ggml.tokens") or []

        def text(key: str) -> str:
            i = meta.get(key)
            if i is None:
                return ""
            i = int(i)
            return tokens[i] if 0 <= i < len(tokens) else ""

        return cls(
            source if isinstance(source, str) and source.strip() else None,
            bos_token=text("tokenizer.ggml.bos_token_id"),
            eos_token=text("tokenizer.ggml.eos_token_id"),
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text. ``extra`` (``tools``, ...) is passed to the template."""
        context: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            chunks = []
            size = 0
            for chunk in self._template.generate(**context):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise ChatTemplateError("chat template output too large")
                chunks.append(chunk)
            return "".join(chunks)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:  # includes sandbox SecurityError
            raise ChatTemplateError(f"chat template failed: {e}") from e
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, RecursionError) as e:
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e

    def render_protected(
        self,
        messages: Sequence[Mapping[str, Any]],
        control_tokens: Collection[str],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> RenderedPrompt:
        """Render as ``render`` does, keeping every caller string (each string
        in ``messages`` except roles, and in ``extra``: tools ...) from
        producing the ``control_tokens`` (the texts of the model's control
        tokens). Tokenize the result with ``RenderedPrompt.segments()``."""
        escaper = _Escaper(control_tokens)
        safe_messages = [escaper.walk(m) for m in messages]
        safe_extra = {k: escaper.walk(v) for k, v in extra.items()}
        marked = self.render(safe_messages, add_generation_prompt=add_generation_prompt, **safe_extra)
        return RenderedPrompt(marked, escaper.escapes)

    def render_request(
        self,
        request: GenerationRequest,
        control_tokens: Collection[str] = (),
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Render a chat request as ``render_protected`` does: its messages,
        and its tools, tool calls, tool results and ``template_kwargs``, the
        way ``adyton.tools.chat_context`` lays them out (the template's own
        tools section, or the kernel's tool-call convention). What every
        backend calls."""
        messages, extra = chat_context(request, self)
        return self.render_protected(messages, control_tokens, add_generation_prompt, **extra)


def render_chat(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """One-shot helper: render ``messages`` with ``template`` (ChatML if None)."""
    return ChatTemplate(template, bos_token=bos_token, eos_token=eos_token).render(
        messages, add_generation_prompt=add_generation_prompt, **extra
    )
