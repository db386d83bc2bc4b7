"""Render chat prompts with the GGUF's own ``tokenizer.chat_template``.

Templates come from model files, i.e. untrusted input: they are rendered in a
Jinja2 ``ImmutableSandboxedEnvironment`` with the conventions of HF
``apply_chat_template`` / llama-cpp-python (``trim_blocks``, ``lstrip_blocks``,
loop controls, ``raise_exception``, ``tojson``, ``strftime_now``).

One renderer serves every local backend: a backend hands it the template
text and the special-token strings it read from its model file
(``ChatTemplate.from_metadata``) and renders ``render_messages`` output.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
    def from_metadata(cls, meta: Any, tokens: Sequence[str] | None = None) -> "ChatTemplate":
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
