"""OpenAI request bodies -> kernel ``GenerationRequest``.

Every field is either honoured, handed to plugins (``extra``,
``constraints``), listed as accepted-but-ignored (``x-adyton-ignored-params``;
a 400 with ``openai.strict``), or refused with a 400 that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adyton import ChatMessage, Constraint, GenerationRequest, InvalidRequest, json_type_name

from .schemas import FIELD_NAMES, ChatCompletionRequest, CompletionRequest, _Common

#: top-level fields accepted but not honoured
IGNORED_FIELDS = (
    "steering_vector_id", "steering_strength", "parallel_tool_calls", "service_tier",
    "metadata", "store", "reasoning_effort", "verbosity", "prompt_cache_key",
    "safety_identifier", "prediction",
)

#: top-level fields passed to plugins through GenerationRequest.extra
EXTENSION_FIELDS = ("policy", "policy_id")


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
        message = f"Unrecognized argument supplied: '{param}'."
    else:
        got = json_type_name(best.get("input"))
        message = f"Invalid value for '{param}': {best['msg']} (got {got})."
    return InvalidRequest(message, param=param, code="invalid_value" if best["type"] != "missing" else "missing_required_parameter")


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
        kw["top_k"] = body.top_k
    if body.min_p is not None:
        kw["min_p"] = body.min_p
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
    messages = []
    for i, m in enumerate(body.messages):
        messages.append(ChatMessage(role=m.role, content=_content(i, m.content)))
        if m.name is not None and "messages.name" not in ignored:
            ignored.append("messages.name")
        if m.tool_calls and "messages.tool_calls" not in ignored:
            ignored.append("messages.tool_calls")
    kw["messages"] = messages
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

    tools_on = bool(body.tools) and body.tool_choice != "none"
    functions_on = bool(body.functions) and body.function_call != "none"
    if tools_on or functions_on:
        name = "tools" if tools_on else "functions"
        raise Unsupported(
            f"'{name}' is not supported: this server does not do tool calling "
            f"(send tool_choice: \"none\" to run the request without tools)",
            param=name,
        )
    for name in ("tools", "tool_choice", "functions", "function_call"):
        if getattr(body, name) is not None:
            ignored.append(name)
    if body.modalities is not None and any(m != "text" for m in body.modalities):
        raise Unsupported("only the 'text' modality is supported", param="modalities")
    if body.web_search_options is not None:
        raise Unsupported("web search is not available on this server", param="web_search_options")

    constraints = []
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
    kw["constraints"] = constraints
    return Parsed(
        request=_build(kw),
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
