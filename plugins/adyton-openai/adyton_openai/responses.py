"""POST /v1/responses (OpenAI's Responses API) over ``kernel.submit``.

A request becomes a kernel chat: ``instructions`` as a system message, then
the turns of ``previous_response_id`` (if any), then ``input`` (a text: one
user message; or items: messages with input_text/output_text parts,
function_call and function_call_output items). ``text.format`` json_schema /
json_object become kernel constraints (enforced by adyton-guided, refused
with 400 where no plugin can). Same pipeline, limits and queue as chat.

Streaming sends OpenAI's event sequence, each with a ``sequence_number``:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``, then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` ran out, or ``error`` +
``response.failed``).

Stored responses (``store``, default true) are kept in the kernel's
database (``adyton_openai.store``), so every server sharing it can continue,
return or delete them and a restart keeps them; bounded per account (least
recently used out first), expiring (``openai.responses_ttl_days``), and
readable only by the account that made them: another account's id is "not
found", as is an evicted, expired or unknown one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from quart import Response, jsonify

from adyton import (
    AdytonError,
    BackendError,
    ChatMessage,
    ChoiceFinished,
    Constraint,
    FinishReason,
    Generation,
    InvalidRequest,
    Kernel,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    Waiting,
    current_kernel,
    tools,
)

from . import convert, render
from .schemas import ResponsesRequest
from .settings import OpenAISettings
from .store import ResponseStore, Stored

log = logging.getLogger("adyton.openai.responses")

#: accepted, not honoured: listed in x-adyton-ignored-params (400 with openai.strict)
_IGNORED = ("service_tier", "prompt_cache_key", "safety_identifier", "max_tool_calls",
            "stream_options")

#: kernel/chat parameter names in errors -> this endpoint's
_KERNEL_PARAMS = {"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text.format"}

#: ``include`` values that are honoured by having nothing to include (no reasoning here)
_VACUOUS_INCLUDES = frozenset({"reasoning.encrypted_content"})
#: the ``include`` value that asks for the output text's logprobs
_LOGPROBS = "message.output_text.logprobs"


class Unsupported(convert.Unsupported):
    pass


class ResponseOut(BaseModel):
    """A response object; with ``stream: true``, server-sent events
    (``response.created`` ... ``response.completed``)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None


# --------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------


def response_store(kernel: Kernel) -> ResponseStore:
    """This app's store, on the kernel's database, bounded as ``[openai]`` says."""
    settings = kernel.section("openai", OpenAISettings)
    ttl = settings.responses_ttl_days
    return kernel.state(ResponseStore, lambda: ResponseStore(
        kernel.database, capacity=settings.responses_max_stored, max_chars=settings.responses_max_chars,
        ttl_s=None if ttl is None else ttl * 86400.0))


async def in_store(kernel: Kernel, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a store call) off the event loop; a database
    that refuses the work (server gone, disk full, locked too long) is a 503
    naming it, not a 500."""
    with kernel.database.refused_as_503("stored responses cannot be read or written right now (the database "
                                        "failed); try again later", code="response_store_unavailable"):
        return await kernel.offload(fn, *args, **kwargs)


# --------------------------------------------------------------------------
# request -> kernel
# --------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{where}': expected a string or an array of content parts.",
                             param=where, code="invalid_value")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"Missing required parameter: '{where}[{j}].text'.",
                                     param=f"{where}[{j}].text", code="missing_required_parameter")
            texts.append(text)
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise Unsupported(f"content parts of type {kind!r} are not supported: this server "
                              "accepts text only", param=f"{where}[{j}].type")
    return "\n".join(texts)


def input_messages(value: str | list[dict[str, Any]] | None,
                   history: list[ChatMessage] | None = None) -> list[ChatMessage]:
    """``input`` as kernel chat turns (instructions not included); ``history``
    (the previous response's turns) names the functions of earlier calls."""
    if value is None:
        return []
    if isinstance(value, str):
        return [ChatMessage(role="user", content=value)]
    out: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}.",
                                     param=f"{where}.role", code="invalid_value")
            out.append(ChatMessage(role=role, content=_text_of(item.get("content"), f"{where}.content")))
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            arguments = item.get("arguments", "{}")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
                raise InvalidRequest(f"'{where}' (function_call) needs string 'call_id', 'name' and "
                                     "'arguments'", param=where, code="invalid_value")
            call = ToolCall(id=call_id, name=name, arguments=arguments)
            if out and out[-1].role == "assistant" and out[-1].tool_calls:
                out[-1].tool_calls.append(call)  # parallel calls: one assistant turn
            else:
                out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"Missing required parameter: '{where}.call_id'.",
                                     param=f"{where}.call_id", code="missing_required_parameter")
            name = next((c.name for m in [*(history or ()), *out] for c in m.tool_calls if c.id == call_id), None)
            out.append(ChatMessage(role="tool", content=_text_of(item.get("output", ""), f"{where}.output"),
                                   tool_call_id=call_id, name=name))
        else:
            raise Unsupported(f"input items of type {kind!r} are not supported here (messages, "
                              "function_call and function_call_output are)", param=f"{where}.type")
    return out


@dataclass(slots=True)
class Parsed:
    """A Responses request, understood."""

    body: ResponsesRequest
    convert: convert.Parsed
    #: the new turns (previous history + input), what a stored response keeps
    turns: list[ChatMessage]
    text_format: dict[str, Any]


def _constraints(body: ResponsesRequest) -> tuple[list[Constraint], dict[str, Any]]:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return [], {"type": "text"}
    if fmt.type == "json_object":
        return [Constraint(kind="json_object", source="text.format")], {"type": "json_object"}
    if fmt.name is None:
        raise InvalidRequest("Missing required parameter: 'text.format.name'.",
                             param="text.format.name", code="missing_required_parameter")
    if fmt.schema_ is None:
        raise InvalidRequest("Missing required parameter: 'text.format.schema'.",
                             param="text.format.schema", code="missing_required_parameter")
    echo = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema_, "strict": bool(fmt.strict),
            "description": fmt.description}
    return [Constraint(kind="json_schema", source="text.format", value=fmt.schema_,
                       options={"name": fmt.name, "strict": bool(fmt.strict)})], echo


def _tools(body: ResponsesRequest, kw: dict[str, Any]) -> None:
    """Function tools and tool_choice -> the kernel request's (built-in tools: 400)."""
    functions = []
    for j, tool in enumerate(body.tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise Unsupported(f"the tool type {kind!r} is not available on this server (only function "
                              "tools are: no built-in web search, file search, computer use ...)",
                              param=f"tools[{j}].type")
        unknown = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
        if unknown:
            raise InvalidRequest(f"Unrecognized argument supplied: 'tools[{j}].{unknown[0]}'.",
                                 param=f"tools[{j}].{unknown[0]}", code="unknown_parameter")
        name, parameters = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str):
            raise InvalidRequest(f"Missing required parameter: 'tools[{j}].name'.",
                                 param=f"tools[{j}].name", code="missing_required_parameter")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"Invalid value for 'tools[{j}].parameters': expected an object.",
                                 param=f"tools[{j}].parameters", code="invalid_value")
        try:
            functions.append(Tool(name=name, description=tool.get("description"),
                                  parameters=parameters or {"type": "object", "properties": {}}))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = f"tools[{j}]." + ".".join(str(p) for p in err["loc"])
            raise InvalidRequest(f"Invalid value for '{where}': {err['msg']}", param=where,
                                 code="invalid_value") from None
    choice = body.tool_choice
    if not functions:
        if choice not in (None, "none"):
            raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified",
                                 param="tool_choice", code="invalid_value")
        return
    kw["tools"] = functions
    # off unless asked for, as on chat completions (small models asked for
    # "one or more" calls repeat the first until max_output_tokens)
    kw["parallel_tool_calls"] = bool(body.parallel_tool_calls)
    if choice is None or choice in ("none", "auto", "required"):
        kw["tool_choice"] = choice or "auto"
        return
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        if choice["name"] not in {t.name for t in functions}:
            raise InvalidRequest(f"tool_choice names the function '{choice['name']}', which is not in 'tools'",
                                 param="tool_choice", code="invalid_value")
        kw["tool_choice"], kw["tool_name"] = "required", choice["name"]
        return
    raise Unsupported("this tool_choice is not supported here (none, auto, required or "
                      "{\"type\": \"function\", \"name\": ...} are)", param="tool_choice")


def _refuse_unsupported(body: ResponsesRequest) -> None:
    reasoning = body.reasoning or {}
    if any(v is not None for v in reasoning.values()):
        raise Unsupported("'reasoning' cannot be honoured: the models served here do not reason "
                          "separately (leave it out)", param="reasoning")
    extra = [x for x in (body.include or []) if x not in _VACUOUS_INCLUDES and x != _LOGPROBS]
    if extra:
        raise Unsupported(f"'include' value {extra[0]!r} is not supported", param="include")
    if body.background:
        raise Unsupported("background responses are not supported", param="background")
    if body.prompt is not None:
        raise Unsupported("stored prompt templates ('prompt') are not supported", param="prompt")
    if body.conversation is not None:
        raise Unsupported("conversations are not supported: use previous_response_id", param="conversation")


def parse(body: ResponsesRequest, history: list[ChatMessage]) -> Parsed:
    _refuse_unsupported(body)
    ignored = [name for name in _IGNORED if getattr(body, name) is not None]
    want_logprobs = _LOGPROBS in (body.include or [])
    if body.top_logprobs is not None and not want_logprobs:
        ignored.append("top_logprobs")  # OpenAI sends logprobs only when include asks for them
    if body.truncation == "auto":
        ignored.append("truncation")  # a too-long conversation is a 400, never cut
    if body.text is not None and body.text.verbosity is not None:
        ignored.append("text.verbosity")
    if body.parallel_tool_calls is not None and not body.tools:
        ignored.append("parallel_tool_calls")  # nothing to call: it changes nothing
    turns = [*history, *input_messages(body.input, history)]
    if not turns:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input",
                             code="missing_required_parameter")
    messages = ([ChatMessage(role="system", content=body.instructions)] if body.instructions else []) + turns
    constraints, text_format = _constraints(body)
    kw: dict[str, Any] = {"messages": messages, "stream": bool(body.stream), "constraints": constraints}
    if body.model:
        kw["model"] = body.model
    if body.max_output_tokens is not None:
        kw["max_tokens"] = body.max_output_tokens
    if body.temperature is not None:
        kw["temperature"] = body.temperature
    if body.top_p is not None:
        if body.top_p == 0.0:
            kw["temperature"] = 0.0
        else:
            kw["top_p"] = body.top_p
    if body.seed is not None:
        kw["seed"] = body.seed % (2**64)
    if body.user is not None:
        kw["user"] = body.user
    if want_logprobs:
        kw["logprobs"] = body.top_logprobs or 0
    _tools(body, kw)
    request = convert._build(kw)
    if want_logprobs and request.tools and request.tool_choice != "none":
        raise Unsupported(f"'include' {_LOGPROBS!r} together with function tools is not supported",
                          param="include")
    call_constraint = tools.tool_call_constraint(request)
    if call_constraint is not None:
        request.constraints.append(call_constraint)
    return Parsed(body=body, convert=convert.Parsed(request=request, ignored=ignored), turns=turns,
                  text_format=text_format)


# --------------------------------------------------------------------------
# kernel -> response objects
# --------------------------------------------------------------------------


def _usage(generation: Generation) -> dict[str, Any]:
    u = generation.usage
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}


def _part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _message(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


class Renderer:
    """The response object of one request, in its successive states."""

    def __init__(self, parsed: Parsed, generation: Generation, model: str) -> None:
        self.parsed = parsed
        self.generation = generation
        self.id = f"resp_{generation.id}"
        self.model = model

    def response(self, status: str, output: list[dict[str, Any]], *, usage: bool = False,
                 incomplete: str | None = None, error: AdytonError | None = None) -> dict[str, Any]:
        body = self.parsed.body
        request = self.parsed.convert.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.generation.created,
            "status": status,
            "background": False,
            "error": None if error is None else {"code": error.code or error.type, "message": error.message},
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": bool(body.parallel_tool_calls),
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": body.store is not False,
            "temperature": request.temperature,
            "text": {"format": self.parsed.text_format},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": [{"type": "function", "name": t.name, "description": t.description,
                       "parameters": t.parameters, "strict": True} for t in request.tools],
            "top_p": request.top_p,
            "truncation": body.truncation or "disabled",
            "usage": _usage(self.generation) if usage else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def final(self, output: list[dict[str, Any]], finish: FinishReason) -> dict[str, Any]:
        done = finish is FinishReason.STOP
        return self.response("completed" if done else "incomplete", output, usage=True,
                             incomplete=None if done else "max_output_tokens")


class Output:
    """The output items of one response, built from the generated text piece
    by piece: a message (text), and a function_call item per tool call when
    the request has tools. Each step returns the stream events it makes, as
    ``(type, fields)``; ``items`` is the final output."""

    def __init__(self, renderer: Renderer) -> None:
        request = renderer.parsed.convert.request
        self.gen_id = renderer.generation.id
        self.items: list[dict[str, Any]] = []
        self.calls: list[ToolCall] = []
        self.texts: list[str] = []  # all message text, for the stored history
        self._reader = (tools.ToolCallReader(request.tools)
                        if request.tools and request.tool_choice != "none" else None)
        self._open: dict[str, Any] | None = None  # the message being written
        self._parts: list[str] = []
        self._logprobs: list[dict[str, Any]] = []

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        # without tools the answer is a message from the start (as OpenAI streams it)
        return [] if self._reader is not None else self._open_message()

    def _open_message(self) -> list[tuple[str, dict[str, Any]]]:
        suffix = "" if not self.items else f"_{len(self.items)}"
        self._open = _message(f"msg_{self.gen_id}{suffix}", "in_progress", [])
        self._parts = []
        self._logprobs = []
        index = len(self.items)
        return [("response.output_item.added", {"output_index": index, "item": self._open}),
                ("response.content_part.added", {"item_id": self._open["id"], "output_index": index,
                                                 "content_index": 0, "part": _part("")})]

    def _close_message(self, status: str) -> list[tuple[str, dict[str, Any]]]:
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(self._parts)
        done = {**item, "status": status, "content": [_part(text, self._logprobs)]}
        index = len(self.items)
        self.items.append(done)
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [("response.output_text.done", {**where, "text": text, "logprobs": self._logprobs}),
                ("response.content_part.done", {**where, "part": done["content"][0]}),
                ("response.output_item.done", {"output_index": index, "item": done})]

    def _text(self, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> list[tuple[str, dict[str, Any]]]:
        rendered = render.chat_logprobs(logprobs)["content"] if logprobs else []  # type: ignore[index]
        if not text:
            if rendered and self._open is not None:  # tokens of a stop string: no text, still tokens
                self._logprobs.extend(rendered)
            return []
        if self._open is None and self._reader is not None and not text.strip():
            self.texts.append(text)  # whitespace around calls opens no message
            return []
        events = self._open_message() if self._open is None else []
        self._parts.append(text)
        self.texts.append(text)
        self._logprobs.extend(rendered)
        events.append(("response.output_text.delta", {"item_id": self._open["id"],  # type: ignore[index]
                                                      "output_index": len(self.items), "content_index": 0,
                                                      "delta": text, "logprobs": rendered}))
        return events

    def _call(self, call: ToolCall) -> list[tuple[str, dict[str, Any]]]:
        events = self._close_message("completed")
        self.calls.append(call)
        index = len(self.items)
        item = {"type": "function_call", "id": f"fc_{self.gen_id}_{len(self.calls)}", "call_id": call.id,
                "name": call.name, "arguments": call.arguments, "status": "completed"}
        self.items.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return [
            *events,
            ("response.output_item.added", {"output_index": index,
                                            "item": {**item, "arguments": "", "status": "in_progress"}}),
            ("response.function_call_arguments.delta", {**where, "delta": call.arguments}),
            ("response.function_call_arguments.done", {**where, "name": call.name, "arguments": call.arguments}),
            ("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> list[tuple[str, dict[str, Any]]]:
        if self._reader is None:
            return self._text(text, logprobs)
        return self._pieces(self._reader.feed(text))

    def _pieces(self, pieces: list[tools.Piece]) -> list[tuple[str, dict[str, Any]]]:
        """The events of what the tool-call reader read: whole calls and
        content (it is made without stream_arguments: no CallStart or
        ArgumentsPiece, whose text is not content)."""
        events: list[tuple[str, dict[str, Any]]] = []
        for piece in pieces:
            if isinstance(piece, tools.CallPiece):
                events += self._call(piece.call)
            elif isinstance(piece, tools.ContentPiece):
                events += self._text(piece.text)
            else:
                raise TypeError(f"unexpected streamed tool-call piece {piece!r}")
        return events

    def finish(self, finish: FinishReason) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if self._reader is not None:
            events += self._pieces(self._reader.finish())
        if self._open is None and not self.items:
            events += self._open_message()  # nothing at all: an empty message, as OpenAI answers
        events += self._close_message("completed" if finish is FinishReason.STOP else "incomplete")
        return events

    def turn(self) -> ChatMessage:
        """The assistant turn this output adds to a stored conversation."""
        content = "".join(self.texts)
        return ChatMessage(role="assistant", content=content.strip() if self.calls else content,
                           tool_calls=list(self.calls))


async def remember(kernel: Kernel, store: ResponseStore, parsed: Parsed, generation: Generation,
                   output: Output, response: dict[str, Any]) -> None:
    if parsed.body.store is False:
        return
    history = [*parsed.turns, output.turn()]
    await in_store(kernel, store.put, response["id"],
                   Stored(owner=generation.principal.id, history=history, response=response))


class Events:
    """Server-sent events with increasing ``sequence_number``s."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


async def stream_events(renderer: Renderer, kernel: Kernel, store: ResponseStore,
                        ping: bool) -> AsyncIterator[str]:
    """Runs after the handler returned: no request or app context here."""
    generation = renderer.generation
    event = Events()
    output = Output(renderer)
    yield event("response.created", response=renderer.response("in_progress", []))
    yield event("response.in_progress", response=renderer.response("in_progress", []))
    for kind, fields in output.start():
        yield event(kind, **fields)
    finish = FinishReason.CANCELLED
    events = generation.events()
    try:
        async for ev in events:
            if type(ev) is TextDelta:
                for kind, fields in output.feed(ev.text, ev.logprobs):
                    yield event(kind, **fields)
            elif type(ev) is ChoiceFinished:
                finish = ev.finish_reason
            elif type(ev) is Waiting and ping:
                yield render.PING
    except Exception as exc:  # the status line is long gone: tell the client in-band
        error = exc if isinstance(exc, AdytonError) else BackendError(f"internal error: {type(exc).__name__}")
        if not isinstance(exc, AdytonError):
            log.exception("responses stream %s failed", generation.id)
        yield event("error", code=error.code or error.type, message=error.message, param=error.param)
        yield event("response.failed", response=renderer.response("failed", output.items, usage=True,
                                                                   error=error))
        return
    finally:
        await events.aclose()
        await generation.aclose()
    for kind, fields in output.finish(finish):
        yield event(kind, **fields)
    final = renderer.final(output.items, finish)
    try:
        await remember(kernel, store, renderer.parsed, generation, output, final)
    except AdytonError as exc:  # asked to be stored and it was not: the client must know
        yield event("error", code=exc.code or exc.type, message=exc.message, param=exc.param)
        yield event("response.failed", response=renderer.response("failed", output.items, usage=True,
                                                                   error=exc))
        return
    yield event("response.completed" if final["status"] == "completed" else "response.incomplete",
                response=final)


# --------------------------------------------------------------------------
# the route
# --------------------------------------------------------------------------


async def create(wire: Any) -> Response:
    from . import wire as wire_module

    kernel = current_kernel()
    settings = kernel.section("openai", OpenAISettings)
    body, _ = await wire._body(ResponsesRequest, kernel, settings)
    credentials = wire_module.credentials_from_request(wire.name, kernel)
    store = response_store(kernel)
    history: list[ChatMessage] = []
    if body.previous_response_id is not None:
        principal = await kernel.authenticate(credentials)
        history = list((await in_store(kernel, store.get, body.previous_response_id, principal.id)).history)
    parsed = parse(body, history)
    wire._check_ignored(parsed.convert, settings)
    wire._server_limits(parsed.convert, settings)
    try:
        generation = await wire._submitter(credentials, kernel)(parsed.convert)
    except AdytonError as exc:  # name this endpoint's fields, not chat's
        exc.param = _KERNEL_PARAMS.get(exc.param, exc.param)  # type: ignore[arg-type]
        raise
    headers = wire._headers(parsed.convert, generation)
    renderer = Renderer(parsed, generation, wire._model_name(generation.model, kernel, settings))
    if parsed.convert.request.stream:
        return wire._stream(stream_events(renderer, kernel, store, settings.ping), headers)
    result = await generation.result()
    choice = result.choices[0]
    output = Output(renderer)
    output.start()
    output.feed(choice.text, choice.logprobs)
    output.finish(choice.finish_reason)
    final = renderer.final(output.items, choice.finish_reason)
    await remember(kernel, store, parsed, generation, output, final)
    response = jsonify(final)
    response.headers.update(headers)
    return response


async def _owner(wire: Any) -> str:
    from . import wire as wire_module

    kernel = current_kernel()
    credentials = wire_module.credentials_from_request(wire.name, kernel)
    return (await kernel.authenticate(credentials)).id


class DeletedOut(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


def routes(wire: Any) -> list[tuple[str, str, Any, type | None, type, list[str]]]:
    """(rule, endpoint, view, documented body, documented response, methods)
    for the wire format's blueprint; the store is the app's (``response_store``)."""

    async def create_response() -> Response:
        """Create a model response

        OpenAI Responses API: text and structured (`text.format`) output,
        `instructions`, `previous_response_id`; `stream: true` answers with
        the response.* server-sent events."""
        return await create(wire)

    async def get_response(response_id: str) -> Response:
        """Retrieve a stored response

        The response object as it was returned; 404 for an unknown, evicted,
        unstored, expired or another account's response."""
        kernel = current_kernel()
        stored = await in_store(kernel, response_store(kernel).get, response_id, await _owner(wire),
                                param="response_id")
        return jsonify(stored.response)

    async def delete_response(response_id: str) -> Response:
        """Delete a stored response"""
        kernel = current_kernel()
        await in_store(kernel, response_store(kernel).delete, response_id, await _owner(wire))
        return jsonify({"id": response_id, "object": "response.deleted", "deleted": True})

    return [
        ("/v1/responses", "responses", create_response, ResponsesRequest, ResponseOut, ["POST"]),
        ("/v1/responses/<response_id>", "response", get_response, None, ResponseOut, ["GET"]),
        ("/v1/responses/<response_id>", "response_delete", delete_response, None, DeletedOut, ["DELETE"]),
    ]


__all__ = ["ResponseStore", "Stored", "input_messages", "parse", "response_store", "routes"]
