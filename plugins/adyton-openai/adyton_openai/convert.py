"""OpenAI request bodies -> kernel ``GenerationRequest``.

Every field is either honoured, handed to plugins (``extra``,
``constraints``), listed as accepted-but-ignored (``x-adyton-ignored-params``;
a 400 with ``openai.strict``), or refused with a 400 that says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adyton import ChatMessage, Constraint, GenerationRequest, InvalidRequest, ToolCall, json_type_name, tools

from .schemas import FIELD_NAMES, ChatCompletionRequest, CompletionRequest, _Common

#: top-level fields accepted but not honoured
IGNORED_FIELDS = (
    "service_tier",
    "metadata", "store", "reasoning_effort", "verbosity", "prompt_cache_key",
    "safety_identifier", "prediction",
)

#: top-level fields passed to plugins through GenerationRequest.extra (without
#: a plugin that handles them, the kernel refuses the request: never ignored)
EXTENSION_FIELDS = ("policy", "policy_id", "steering_vector_id", "steering_strength")


class Unsupported(InvalidRequest):
    code = "unsupported_parameter"


@dataclass(slots=True)
class Parsed:
    """What the route needs besides the kernel request."""

    request: GenerationRequest
    ignored: list[str] = field(default_factory=list)
    include_usage: bool = False
    #: chat: top_logprobs asked (None: no logprobs); legacy: the logprobs int
    logprobs: int | None = None
    echo: str | None = None


# --------------------------------------------------------------------------
# body -> model, with OpenAI-style error messages
# --------------------------------------------------------------------------


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part in FIELD_NAMES:
            out += f".{part}" if out else part
        # else: a union member label ("str", "list[TextPart]") or a dict key
    return out or "body"


def validation_error(exc: ValidationError, known: set[str]) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    extras = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    if extras:
        name = str(extras[0]["loc"][0])
        return InvalidRequest(
            f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
        )
    # the most specific error: the deepest location (union members report shallow ones too)
    best = max(errors, key=lambda e: len([p for p in e["loc"] if isinstance(p, int) or p in FIELD_NAMES]))
    param = _param(best["loc"])
    if best["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif best["type"] == "extra_forbidden":
        param = f"{param}.{best['loc'][-1]}" if best["loc"] and isinstance(best["loc"][-1], str) else param
        message = f"Unrecognized argument supplied: '{param}'."
    else:
        got = json_type_name(best.get("input"))
        message = f"Invalid value for '{param}': {best['msg']} (got {got})."
    code = "invalid_value" if best["type"] != "missing" else "missing_required_parameter"
    return InvalidRequest(message, param=param, code=code)


def load(model_cls: type[_Common], body: dict[str, Any], extra_params: list[str]) -> tuple[_Common, dict[str, Any]]:
    """Validate ``body``; returns the model and the operator-declared extension fields."""
    passthrough = {k: body.pop(k) for k in list(body) if k in extra_params and k not in model_cls.model_fields}
    try:
        return model_cls.model_validate(body, strict=True), passthrough
    except ValidationError as exc:
        raise validation_error(exc, set(model_cls.model_fields)) from None


# --------------------------------------------------------------------------
# model -> GenerationRequest
# --------------------------------------------------------------------------


def _stop(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [s for s in value if s]


def _logit_bias(value: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, bias in (value or {}).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 12):
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {key!r} is not a token id (a non-negative integer as a string).",
                param="logit_bias", code="invalid_value",
            )
        token = int(key)
        out[token] = bias
    return out


def _common(body: _Common, ignored: list[str]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if body.model:
        kw["model"] = body.model
    if body.temperature is not None:
        kw["temperature"] = body.temperature
    if body.top_p is not None:
        if body.top_p == 0.0:
            kw["temperature"] = 0.0  # an empty nucleus: the most likely token
        else:
            kw["top_p"] = body.top_p
    if body.top_k is not None:
        kw["top_k"] = max(body.top_k, 0)  # vLLM's -1: off
    if body.min_p is not None:
        kw["min_p"] = body.min_p
    if body.repetition_penalty is not None:
        kw["repetition_penalty"] = body.repetition_penalty
    if body.min_tokens is not None:
        kw["min_tokens"] = body.min_tokens
    kw["constraints"] = _extension_constraints(body)
    if body.n is not None:
        kw["n"] = body.n
    kw["stop"] = _stop(body.stop)
    if body.seed is not None:
        kw["seed"] = body.seed % (2**64)  # numpy seeds are non-negative; keep every int64 distinct
    kw["stream"] = bool(body.stream)
    if body.stream_options is not None and not body.stream:
        ignored.append("stream_options")
    if body.stream_options is not None and body.stream_options.include_obfuscation is not None:
        ignored.append("stream_options.include_obfuscation")
    kw["logit_bias"] = _logit_bias(body.logit_bias)
    if body.presence_penalty is not None:
        kw["presence_penalty"] = body.presence_penalty
    if body.frequency_penalty is not None:
        kw["frequency_penalty"] = body.frequency_penalty
    if body.user is not None:
        kw["user"] = body.user
    extra: dict[str, Any] = {}
    for name in EXTENSION_FIELDS:
        value = getattr(body, name)
        if value is not None:
            extra[name] = value
    kw["extra"] = extra
    for name in IGNORED_FIELDS:
        if getattr(body, name, None) is not None:
            ignored.append(name)
    return kw


def _extension_constraints(body: _Common) -> list[Constraint]:
    """vLLM's guided_* and llama.cpp's grammar / json_schema fields."""
    out: list[Constraint] = []
    if body.guided_json is not None:
        schema = body.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequest(f"'guided_json' is not valid JSON: {exc}", param="guided_json",
                                     code="invalid_value") from None
        out.append(Constraint(kind="json_schema", value=schema, source="guided_json"))
    if body.json_schema is not None:
        out.append(Constraint(kind="json_schema", value=body.json_schema, source="json_schema"))
    if body.guided_regex is not None:
        out.append(Constraint(kind="regex", value=body.guided_regex, source="guided_regex"))
    if body.guided_choice is not None:
        out.append(Constraint(kind="choice", value=list(body.guided_choice), source="guided_choice"))
    if body.guided_grammar is not None:
        out.append(Constraint(kind="grammar", value=body.guided_grammar, source="guided_grammar"))
    if body.grammar is not None:
        out.append(Constraint(kind="grammar", value=body.grammar, syntax="gbnf", source="grammar"))
    return out


def _arguments(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


#: response-message fields a client echoes back with model_dump(): empty ones
#: are accepted silently, others listed as ignored. (``parsed``, which the
#: SDKs' parse() helpers add, is the content itself: always silent.)
_ECHOED = ("refusal", "function_call", "audio", "annotations", "reasoning_content")


def _message(i: int, m: Any, ignored: list[str]) -> ChatMessage:
    for name in _ECHOED:
        if getattr(m, name) and f"messages.{name}" not in ignored:
            ignored.append(f"messages.{name}")
    calls: list[ToolCall] = []
    for call in m.tool_calls or []:
        if m.role != "assistant":
            raise InvalidRequest(f"only assistant messages have 'tool_calls' (messages[{i}] is '{m.role}')",
                                 param=f"messages[{i}].tool_calls", code="invalid_value")
        calls.append(ToolCall(id=call.id, name=call.function.name, arguments=_arguments(call.function.arguments)))
    if m.role == "tool" and not m.tool_call_id:
        raise InvalidRequest(f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                             param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
    if m.tool_call_id is not None and m.role != "tool":
        raise InvalidRequest(f"only tool messages have 'tool_call_id' (messages[{i}] is '{m.role}')",
                             param=f"messages[{i}].tool_call_id", code="invalid_value")
    if m.name is not None and m.role != "tool" and "messages.name" not in ignored:
        ignored.append("messages.name")
    return ChatMessage(role=m.role, content=_content(i, m.content), tool_calls=calls,
                       tool_call_id=m.tool_call_id, name=m.name if m.role == "tool" else None)


def _tools(body: ChatCompletionRequest, kw: dict[str, Any], ignored: list[str]) -> None:
    """tools / tool_choice / parallel_tool_calls -> the kernel request's."""
    if body.functions or body.function_call is not None:
        raise Unsupported(
            "the legacy 'functions' / 'function_call' are not supported: send 'tools' and 'tool_choice'",
            param="functions" if body.functions else "function_call",
        )
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified",
                                 param="tool_choice", code="invalid_value")
        if body.parallel_tool_calls is not None:
            ignored.append("parallel_tool_calls")  # nothing to call: it changes nothing
        return
    kw["tools"] = [
        {"name": t.function.name, "description": t.function.description,
         "parameters": t.function.parameters if t.function.parameters is not None
         else {"type": "object", "properties": {}}}
        for t in body.tools
    ]
    names = [t["name"] for t in kw["tools"]]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", param="tools", code="invalid_value")
    # off unless asked for (as llama.cpp's server): small models asked for
    # "one or more" calls repeat the first until max_tokens
    kw["parallel_tool_calls"] = bool(body.parallel_tool_calls)
    if choice is None:
        return
    if isinstance(choice, str):
        kw["tool_choice"] = choice
        return
    if choice.function.name not in names:
        raise InvalidRequest(f"tool_choice names the function '{choice.function.name}', which is not in 'tools'",
                             param="tool_choice", code="invalid_value")
    kw["tool_choice"] = "required"
    kw["tool_name"] = choice.function.name


def _content(message_index: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise Unsupported(
                f"content parts of type '{part.type}' are not supported: this server accepts text only",
                param=f"messages[{message_index}].content[{j}].type",
            )
        if part.text is None:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{message_index}].content[{j}].text'.",
                param=f"messages[{message_index}].content[{j}].text", code="missing_required_parameter",
            )
        texts.append(part.text)
    return "\n".join(texts)


def chat_request(body: ChatCompletionRequest, extension: dict[str, Any]) -> Parsed:
    ignored: list[str] = []
    kw = _common(body, ignored)
    kw["extra"].update(extension)
    kw["messages"] = [_message(i, m, ignored) for i, m in enumerate(body.messages)]
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise InvalidRequest(
            "'max_tokens' and 'max_completion_tokens' disagree: send one of them",
            param="max_completion_tokens", code="invalid_value",
        )
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if limit is not None:
        kw["max_tokens"] = limit

    logprobs: int | None = None
    if body.logprobs:
        logprobs = body.top_logprobs or 0
        kw["logprobs"] = logprobs
    elif body.top_logprobs is not None:
        raise InvalidRequest(
            "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value"
        )

    _tools(body, kw, ignored)
    if body.chat_template_kwargs:
        reserved = sorted(set(body.chat_template_kwargs) & tools.RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise InvalidRequest(
                f"'chat_template_kwargs' cannot set {', '.join(repr(k) for k in reserved)}: the server sets it",
                param="chat_template_kwargs", code="invalid_value")
        kw["template_kwargs"] = body.chat_template_kwargs
    if body.modalities is not None and any(m != "text" for m in body.modalities):
        raise Unsupported("only the 'text' modality is supported", param="modalities")
    if body.web_search_options is not None:
        raise Unsupported("web search is not available on this server", param="web_search_options")

    constraints = kw["constraints"]
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        constraints.append(Constraint(kind="json_object", source="response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise InvalidRequest(
                "Missing required parameter: 'response_format.json_schema'.",
                param="response_format.json_schema", code="missing_required_parameter",
            )
        spec = fmt.json_schema
        constraints.append(Constraint(
            kind="json_schema", source="response_format",
            value=spec.schema_ if spec.schema_ is not None else {},
            options={"name": spec.name, "strict": bool(spec.strict)},
        ))
    request = _build(kw)
    if request.tools and request.tool_choice != "none" and logprobs is not None:
        raise Unsupported("'logprobs' together with 'tools' is not supported", param="logprobs")
    call_constraint = tools.tool_call_constraint(request)
    if call_constraint is not None:
        request.constraints.append(call_constraint)
    return Parsed(
        request=request,
        ignored=ignored,
        include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
        logprobs=logprobs,
    )


def completion_request(body: CompletionRequest, prompt: str, extension: dict[str, Any]) -> Parsed:
    ignored: list[str] = []
    kw = _common(body, ignored)
    kw["extra"].update(extension)
    kw["prompt"] = prompt
    # the legacy endpoint's default is 16 tokens
    kw["max_tokens"] = body.max_tokens if body.max_tokens is not None else 16
    if body.logprobs is not None:
        kw["logprobs"] = body.logprobs
    if body.suffix:
        raise Unsupported("'suffix' (insertion) is not supported", param="suffix")
    if body.echo and body.logprobs is not None:
        raise Unsupported(
            "'echo' with 'logprobs' is not supported: prompt tokens have no logprobs here", param="echo"
        )
    if body.best_of is not None and body.best_of != (body.n or 1):
        if body.best_of < (body.n or 1):
            raise InvalidRequest("'best_of' must be at least 'n'", param="best_of", code="invalid_value")
        ignored.append("best_of")
    return Parsed(
        request=_build(kw),
        ignored=ignored,
        include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
        logprobs=body.logprobs,
        echo=prompt if body.echo else None,
    )


def _build(kw: dict[str, Any]) -> GenerationRequest:
    try:
        return GenerationRequest(**kw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"Invalid request: {err['msg']}", param=param, code="invalid_value") from None
