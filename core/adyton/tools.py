"""Tool calling: how a chat request's tools reach the chat template, the text
convention a model's calls are written in, and reading calls back out.

**Rendering** (``chat_context``, called by every backend before its chat
template renders): when the model's template has a tools section (it uses the
``tools`` variable, as HF ``apply_chat_template`` templates do), it receives
``tools=`` (OpenAI's ``[{"type": "function", "function": {...}}]`` shape) and
the messages with their ``tool_calls`` (``{"id", "type": "function",
"function": {"name", "arguments": <object>}}``) and ``tool`` turns
(``tool_call_id``, ``name``). Otherwise the kernel's convention is rendered
as plain chat: a system block listing the functions and asking for calls
written as ::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

earlier calls are written that way into their assistant turns, and tool
results become user turns of ``<tool_response>{"name": ..., "content": ...}</tool_response>``
blocks. With ``tool_choice`` "none" the tools are not shown at all.

**The call format** is the same whichever way the prompt was rendered (it is
the Hermes/Qwen convention most tool-aware templates teach): one or more
``<tool_call>JSON</tool_call>`` blocks, the JSON an object with ``name`` and
``arguments``. ``tool_call_constraint`` turns ``tool_choice: required`` into
a ``tool_calls`` constraint (enforced by a guided-decoding plugin, refused
with 400 if none is installed); ``ToolCallReader`` parses the calls out of
generated text, incrementally for streams.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.meta

from .types import ChatMessage, Constraint, GenerationRequest, Tool, ToolCall

if TYPE_CHECKING:  # pragma: no cover
    from .chat_template import ChatTemplate

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

#: the system block of the kernel's convention ({tools}: one JSON line per function)
CONVENTION_PROMPT = (
    "You can call the following functions. Each line is a function with a JSON schema "
    "of its arguments:\n{tools}\n"
    "To call a function, answer with one line per call, exactly like this:\n"
    + TOOL_CALL_OPEN + '{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}'
    + TOOL_CALL_CLOSE + "\n"
    "and nothing else. The result of a call comes back in a "
    + TOOL_RESPONSE_OPEN + " block. If no function is needed, answer normally."
)


#: template variables the renderer sets itself (not settable by ``template_kwargs``)
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


def new_call_id() -> str:
    """A fresh id for a call the model made: ``call_`` and 24 random characters."""
    return "call_" + secrets.token_urlsafe(18)


def tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool in OpenAI's (and HF templates') shape."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def call_json(name: str, arguments: str) -> str:
    """A call as its convention's JSON (arguments inlined as an object if they parse)."""
    try:
        args: Any = json.loads(arguments)
    except ValueError:
        args = arguments
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _template_uses_tools(source: str) -> bool:
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    except jinja2.TemplateError:
        return False


def template_has_tools(template: ChatTemplate) -> bool:
    """True when the chat template renders a ``tools`` variable itself."""
    return not template.is_fallback and _template_uses_tools(template.source)


def _native_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _loads(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _convention_messages(request: GenerationRequest, show_tools: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for m in request.messages or []:
        if m.role == "tool":
            name = m.name or names_by_id.get(m.tool_call_id or "", "")
            block = (TOOL_RESPONSE_OPEN
                     + json.dumps({"name": name, "content": m.content}, ensure_ascii=False)
                     + TOOL_RESPONSE_CLOSE)
            if messages and messages[-1].get("_tool_results"):
                messages[-1]["content"] += "\n" + block
            else:
                messages.append({"role": "user", "content": block, "_tool_results": True})
            continue
        content = m.content
        if m.tool_calls:
            calls = "\n".join(TOOL_CALL_OPEN + call_json(c.name, c.arguments) + TOOL_CALL_CLOSE
                              for c in m.tool_calls)
            content = f"{content}\n{calls}" if content else calls
            for c in m.tool_calls:
                names_by_id[c.id] = c.name
        messages.append({"role": m.role, "content": content})
    for message in messages:
        message.pop("_tool_results", None)
    if show_tools:
        listing = "\n".join(json.dumps(tool_dict(t)["function"], ensure_ascii=False) for t in request.tools)
        block = CONVENTION_PROMPT.format(tools=listing)
        if messages and messages[0]["role"] in ("system", "developer"):
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
        else:
            messages.insert(0, {"role": "system", "content": block})
    return messages


def chat_context(request: GenerationRequest, template: ChatTemplate) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and extra variables to render ``request`` with
    ``template`` (``template.render(messages, **extra)``, or
    ``render_protected``): the one place where tools, tool calls, tool
    results and ``template_kwargs`` meet the chat template."""
    extra: dict[str, Any] = {k: v for k, v in request.template_kwargs.items() if k not in RESERVED_TEMPLATE_VARIABLES}
    show_tools = bool(request.tools) and request.tool_choice != "none"
    has_history = any(m.tool_calls or m.role == "tool" for m in request.messages or [])
    if template_has_tools(template):
        messages = [_native_message(m) for m in request.messages or []]
        if show_tools:
            extra["tools"] = [tool_dict(t) for t in request.tools]
        else:
            extra.pop("tools", None)
        return messages, extra
    extra.pop("tools", None)
    if show_tools or has_history:
        return _convention_messages(request, show_tools), extra
    return [{"role": m.role, "content": m.content} for m in request.messages or []], extra


# --------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------


def tool_call_constraint(request: GenerationRequest) -> Constraint | None:
    """The ``tool_calls`` constraint ``tool_choice: required`` needs (calls
    of ``tool_name`` only, when set); None otherwise. Wire formats append it
    to ``request.constraints``: the kernel refuses the request (400) when no
    installed plugin can enforce it."""
    if not request.tools or request.tool_choice != "required":
        return None
    tools = [t for t in request.tools if request.tool_name in (None, t.name)]
    return Constraint(
        kind="tool_calls",
        source="tool_choice",
        value={"tools": [t.model_dump(exclude_none=True) for t in tools],
               "parallel": request.parallel_tool_calls and request.tool_name is None},
    )


# --------------------------------------------------------------------------
# Reading calls back
# --------------------------------------------------------------------------


@dataclass(slots=True)
class ContentPiece:
    text: str


@dataclass(slots=True)
class CallPiece:
    """A complete call (not streamed)."""

    call: ToolCall


@dataclass(slots=True)
class CallStart:
    """A streamed call begins: its id and name are known, its arguments follow
    as ``ArgumentsPiece`` texts."""

    id: str
    name: str


@dataclass(slots=True)
class ArgumentsPiece:
    """More of the streamed call's arguments (JSON text, as generated)."""

    text: str


Piece = ContentPiece | CallPiece | CallStart | ArgumentsPiece

_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.-]{1,64})"\s*,\s*"arguments"\s*:\s*')
#: what a call's head may start with (anything else is not streamed)
_HEAD_START = '{"name": "'


class _JsonDepth:
    """Where a JSON value stands, fed character by character: done once the
    first object or array it opened is closed."""

    __slots__ = ("depth", "escape", "in_string", "started")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = self.escape = self.started = False

    def feed(self, ch: str) -> bool:
        """True when ``ch`` completes the value."""
        if self.in_string:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_string = False
        elif ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
            self.started = True
        elif ch in "}]":
            self.depth -= 1
            return self.started and self.depth == 0
        return False


def parse_call(body: str, tools: dict[str, Tool] | None = None) -> ToolCall | None:
    """One ``<tool_call>`` block's JSON -> a ToolCall (None if it is not a
    call of a known tool: an object with a string ``name`` and an object
    ``arguments``)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    name, args = data.get("name"), data.get("arguments", data.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    if tools is not None and name not in tools:
        return None
    return ToolCall(id=new_call_id(), name=name, arguments=json.dumps(args, ensure_ascii=False))


class ToolCallReader:
    """Splits generated text into content and tool calls, fed piece by piece.

    ``feed(text)`` returns the pieces that are certain now: ``ContentPiece``
    text (text that could begin ``<tool_call>`` is held back until it is
    known not to) and a ``CallPiece`` per complete, valid call. A block that
    does not parse as a call of a known tool is content, as written.
    ``finish()`` returns what is left (an unclosed call: content).

    ``stream_arguments=True`` is for output a constraint keeps to valid calls
    (the ``tool_calls`` constraint writes ``{"name": …, "arguments": …}`` in
    that order): a call is then announced (``CallStart``) as soon as its name
    is written and its arguments follow as they are generated
    (``ArgumentsPiece``); a call cut short (``max_tokens``) stays as far as it
    got. A block that does not start that way is read whole, as above."""

    __slots__ = ("_args", "_args_done", "_buffer", "_in_call", "calls", "stream_arguments", "tools")

    def __init__(self, tools: list[Tool] | None = None, stream_arguments: bool = False) -> None:
        self.tools = {t.name: t for t in tools} if tools is not None else None
        self.stream_arguments = stream_arguments
        self._buffer = ""
        self._in_call = False
        self.calls = 0
        self._args: _JsonDepth | None = None  #: a streamed call's arguments, while they come
        self._args_done = False

    def _stream(self, out: list[Piece]) -> bool:
        """Streamed-call progress; False when this call is not streamed."""
        if self._args is None:
            head = _CALL_HEAD.match(self._buffer)
            if head is None:  # the head is not whole yet: wait, unless the call closed
                return TOOL_CALL_CLOSE not in self._buffer
            name = head.group(1)
            if self.tools is not None and name not in self.tools:
                return False
            self._buffer = self._buffer[head.end():]
            self._args, self._args_done = _JsonDepth(), False
            self.calls += 1
            out.append(CallStart(new_call_id(), name))
        if not self._args_done:  # (the arguments' own JSON says where they end)
            taken = 0
            for i in range(len(self._buffer)):
                taken = i + 1
                if self._args.feed(self._buffer[i]):
                    self._args_done = True
                    break
            if taken:
                out.append(ArgumentsPiece(self._buffer[:taken]))
                self._buffer = self._buffer[taken:]
        end = self._buffer.find(TOOL_CALL_CLOSE)
        if end >= 0:  # the call's closing brace, then the marker
            self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE):]
            self._in_call, self._args = False, None
        return True

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        out: list[Piece] = []
        while True:
            if self._in_call:
                if (self.stream_arguments and (self._args is not None or self._stream_head_possible())
                        and self._stream(out)):
                    if self._in_call:
                        return out
                    continue
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                body = self._buffer[:end]
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE):]
                self._in_call = False
                call = parse_call(body, self.tools)
                if call is None:
                    out.append(ContentPiece(TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE))
                else:
                    self.calls += 1
                    out.append(CallPiece(call))
                continue
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                before = self._buffer[:start]
                self._content(out, before)
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN):]
                self._in_call = True
                continue
            keep = _prefix_tail(self._buffer, TOOL_CALL_OPEN)
            ready = self._buffer[:len(self._buffer) - keep]
            self._buffer = self._buffer[len(self._buffer) - keep:]
            self._content(out, ready)
            return out

    def _stream_head_possible(self) -> bool:
        head = self._buffer.lstrip()
        return head.startswith(_HEAD_START) or _HEAD_START.startswith(head)

    def _content(self, out: list[Piece], text: str) -> None:
        if self.calls and not text.strip():
            return  # the separator between calls
        if text:
            out.append(ContentPiece(text))

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        if self._args is not None:  # a streamed call cut short: it stays as far as it got
            self._buffer, self._in_call, self._args = "", False, None
            return out
        rest = (TOOL_CALL_OPEN if self._in_call else "") + self._buffer
        self._buffer, self._in_call = "", False
        self._content(out, rest)
        return out


def _prefix_tail(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def split_tool_calls(text: str, tools: list[Tool] | None = None) -> tuple[str, list[ToolCall]]:
    """A finished output -> (its content, its calls)."""
    reader = ToolCallReader(tools)  # not stream_arguments: no CallStart or ArgumentsPiece
    content: list[str] = []
    calls: list[ToolCall] = []
    for piece in reader.feed(text) + reader.finish():
        if isinstance(piece, CallPiece):
            calls.append(piece.call)
        elif isinstance(piece, ContentPiece):
            content.append(piece.text)
        else:
            raise TypeError(f"unexpected streamed tool-call piece {piece!r}")
    return "".join(content), calls


__all__ = [
    "CONVENTION_PROMPT",
    "RESERVED_TEMPLATE_VARIABLES",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ArgumentsPiece",
    "CallPiece",
    "CallStart",
    "ContentPiece",
    "ToolCallReader",
    "chat_context",
    "new_call_id",
    "parse_call",
    "split_tool_calls",
    "template_has_tools",
    "tool_call_constraint",
    "tool_dict",
]
