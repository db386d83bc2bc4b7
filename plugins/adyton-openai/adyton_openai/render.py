"""OpenAI response bodies and SSE chunks, built from plain dicts and strings.

The streaming path pre-renders everything that does not change between
chunks (id, created, model ...) once per response, so each token costs one
``json.dumps`` of its text and an f-string.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from typing import Any, overload

from adyton import AdytonError, FinishReason, TokenLogprob, ToolCall

_dumps = json.dumps


@overload
def finish_reason(reason: FinishReason) -> str: ...
@overload
def finish_reason(reason: None) -> None: ...
def finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    if reason is FinishReason.STOP:
        return "stop"
    # LENGTH, and CANCELLED (the server stopped the generation): the text is cut short
    return "length"


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


@overload
def chat_finish_reason(reason: FinishReason, called: bool) -> str: ...
@overload
def chat_finish_reason(reason: None, called: bool) -> None: ...
def chat_finish_reason(reason: FinishReason | None, called: bool) -> str | None:
    """``tool_calls`` when the model ended after calling tools."""
    if called and reason is FinishReason.STOP:
        return "tool_calls"
    return finish_reason(reason)


@functools.lru_cache(maxsize=256)
def fingerprint(model: str) -> str:
    return "fp_" + hashlib.sha1(model.encode()).hexdigest()[:10]


def error_body(error: AdytonError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


# -- logprobs ------------------------------------------------------------------


def chat_logprobs(items: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top_logprobs],
            }
            for lp in items
        ],
        "refusal": None,
    }


def legacy_logprobs(items: Sequence[TokenLogprob] | None, k: int, offset: int) -> dict[str, Any] | None:
    """The /v1/completions shape; ``offset`` is where the first token starts
    in the choice's text. Returns None for ``items`` None."""
    if items is None:
        return None
    tokens, token_logprobs, text_offset = [], [], []
    tops: list[dict[str, float]] | None = [] if k > 0 else None
    for lp in items:
        tokens.append(lp.token)
        token_logprobs.append(lp.logprob)
        text_offset.append(offset)
        offset += len(lp.token)
        if tops is not None:
            tops.append({t.token: t.logprob for t in lp.top_logprobs})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": text_offset}


# -- streaming -----------------------------------------------------------------


class ChatChunks:
    """``chat.completion.chunk`` events for one response."""

    __slots__ = ("_head", "_tail")

    def __init__(self, id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            'data: {"id":' + _dumps(id) + ',"object":"chat.completion.chunk","created":' + str(created)
            + ',"model":' + _dumps(model) + ',"system_fingerprint":' + _dumps(fingerprint(model))
            + ',"choices":['
        )
        self._tail = ('],"usage":null}\n\n' if include_usage else "]}\n\n")

    def role(self, index: int) -> str:
        return (f'{self._head}{{"index":{index},"delta":{{"role":"assistant","content":""}},'
                f'"logprobs":null,"finish_reason":null}}{self._tail}')

    def content(self, index: int, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> str:
        lp = "null" if logprobs is None else _dumps(chat_logprobs(logprobs))
        return (f'{self._head}{{"index":{index},"delta":{{"content":{_dumps(text)}}},'
                f'"logprobs":{lp},"finish_reason":null}}{self._tail}')

    def finish(self, index: int, reason: str) -> str:
        return f'{self._head}{{"index":{index},"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}{self._tail}'

    def _tool_delta(self, index: int, delta: dict[str, Any]) -> str:
        return (f'{self._head}{{"index":{index},"delta":{{"tool_calls":[{_dumps(delta)}]}},'
                f'"logprobs":null,"finish_reason":null}}{self._tail}')

    def tool_call_start(self, index: int, position: int, id: str, name: str) -> str:
        """A call's first chunk, as the SDKs assemble them: its id, type and
        name, arguments ""."""
        return self._tool_delta(index, {"index": position, "id": id, "type": "function",
                                        "function": {"name": name, "arguments": ""}})

    def tool_call_arguments(self, index: int, position: int, text: str) -> str:
        """More of a call's arguments."""
        return self._tool_delta(index, {"index": position, "function": {"arguments": text}})

    def tool_call(self, index: int, position: int, call: ToolCall) -> str:
        """A whole call: its first chunk, then its arguments."""
        return (self.tool_call_start(index, position, call.id, call.name)
                + self.tool_call_arguments(index, position, call.arguments))

    def usage(self, usage: dict[str, int]) -> str:
        return f'{self._head}],"usage":{_dumps(usage)}}}\n\n'


class CompletionChunks:
    """``text_completion`` events (the legacy endpoint's stream)."""

    __slots__ = ("_head", "_tail")

    def __init__(self, id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            'data: {"id":' + _dumps(id) + ',"object":"text_completion","created":' + str(created)
            + ',"model":' + _dumps(model) + ',"system_fingerprint":' + _dumps(fingerprint(model))
            + ',"choices":['
        )
        self._tail = ('],"usage":null}\n\n' if include_usage else "]}\n\n")

    def content(self, index: int, text: str, logprobs: dict[str, Any] | None = None) -> str:
        lp = "null" if logprobs is None else _dumps(logprobs)
        return f'{self._head}{{"index":{index},"text":{_dumps(text)},"logprobs":{lp},"finish_reason":null}}{self._tail}'

    def finish(self, index: int, reason: str) -> str:
        return f'{self._head}{{"index":{index},"text":"","logprobs":null,"finish_reason":"{reason}"}}{self._tail}'

    def usage(self, usage: dict[str, int]) -> str:
        return f'{self._head}],"usage":{_dumps(usage)}}}\n\n'


PING = ": ping\n\n"
DONE = "data: [DONE]\n\n"


def sse_error(error: AdytonError) -> str:
    return "data: " + _dumps(error_body(error)) + "\n\n"
