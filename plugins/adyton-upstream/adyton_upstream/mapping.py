"""What a request becomes upstream, what is refused, and how guided output
is verified.

Every feature of a ``GenerationRequest`` that needs logits is mapped to the
engine's own parameter (``response_format``, ``logprobs``/``top_logprobs``,
``logit_bias``, vLLM's ``guided_regex``/``guided_choice``, vLLM/llama.cpp
sampling extensions) or refused at admission with a 400 naming the model.
Nothing is silently dropped."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import jsonschema

from adyton import Constraint, GenerationRequest, InvalidRequest, UnsupportedConstraint

from .settings import UpstreamModel

#: sampling extensions by dialect: request field -> (default, upstream name)
_EXTENSIONS: dict[str, dict[str, str]] = {
    "openai": {},
    "vllm": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
             "min_tokens": "min_tokens"},
    "llamacpp": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty"},
    "llama-cpp-python": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty",
                         "min_tokens": "min_tokens"},
}
#: dialects whose engines take chat template variables per request (llama-cpp-python's
#: server sets them when it loads the model, and ignores them in a request)
_TEMPLATE_KWARGS = {"vllm", "llamacpp"}
#: dialects whose engines take a JSON schema as llama.cpp's {"type": "json_object", "schema"}
#: (llama-cpp-python's server answers OpenAI's {"type": "json_schema"} with a 500)
_LLAMA_CPP_SCHEMA = {"llamacpp", "llama-cpp-python"}
_DEFAULTS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0}


def check(request: GenerationRequest, spec: UpstreamModel, model_id: str) -> None:
    """Refuse (400, naming the model) what the engines of ``spec`` cannot do."""
    where = f"model '{model_id}' (served by remote {spec.dialect} engines)"
    for name, default in _DEFAULTS.items():
        if getattr(request, name) != default and name not in _EXTENSIONS[spec.dialect]:
            raise InvalidRequest(f"{where} does not take '{name}'", param=name, code="unsupported_parameter")
    if request.logprobs is not None and not spec.logprobs:
        raise InvalidRequest(f"{where} does not return logprobs", param="logprobs", code="unsupported_parameter")
    if request.logit_bias and not spec.logit_bias:
        raise InvalidRequest(f"{where} does not honour logit_bias", param="logit_bias",
                             code="unsupported_parameter")
    if request.tools:
        raise InvalidRequest(f"{where} does not take tools here", param="tools", code="unsupported_parameter")
    if request.messages is not None and any(m.tool_calls or m.role == "tool" for m in request.messages):
        raise InvalidRequest(f"{where} does not take tool turns here", param="messages",
                             code="unsupported_parameter")
    if request.template_kwargs and spec.dialect not in _TEMPLATE_KWARGS:
        raise InvalidRequest(f"{where} does not take chat template variables", param="chat_template_kwargs",
                             code="unsupported_parameter")
    if len(request.constraints) > 1:
        raise UnsupportedConstraint(f"{where} can enforce one constraint per request, not "
                                    f"{len(request.constraints)}", param=request.constraints[1].source)
    for constraint in request.constraints:
        _check_constraint(constraint, request, spec, where)


def _check_constraint(constraint: Constraint, request: GenerationRequest, spec: UpstreamModel, where: str) -> None:
    kind = constraint.kind
    refuse = None
    if kind in ("json_schema", "json_object"):
        if not spec.json_schema:
            refuse = "the engines do not take response_format"
        elif request.messages is None and spec.dialect != "vllm":
            refuse = "a raw-prompt completion cannot carry response_format here (send messages)"
        elif kind == "json_schema":
            validator(constraint.value)  # a schema that does not compile is the caller's 400
    elif kind in ("regex", "choice"):
        if spec.dialect != "vllm":
            refuse = "only vLLM engines (dialect 'vllm') enforce it"
        elif kind == "regex":
            try:
                re.compile(constraint.value)
            except (re.error, TypeError) as exc:
                raise UnsupportedConstraint(f"the regex constraint does not compile: {exc}",
                                            param=constraint.source) from None
        elif not (isinstance(constraint.value, list) and constraint.value
                  and all(isinstance(v, str) for v in constraint.value)):
            raise UnsupportedConstraint("a choice constraint needs a non-empty list of strings",
                                        param=constraint.source)
    elif kind == "grammar":
        refuse = "a grammar's output from a remote engine cannot be verified here"
    else:
        refuse = "it is not mapped to a remote engine"
    if refuse:
        raise UnsupportedConstraint(f"{where} cannot enforce the {kind} constraint from "
                                    f"'{constraint.source}': {refuse}", param=constraint.source)


def body(request: GenerationRequest, spec: UpstreamModel, model_id: str, seed: int | None,
         max_tokens: int | None) -> tuple[str, dict[str, Any]]:
    """The upstream route (``/v1/chat/completions`` or ``/v1/completions``)
    and its JSON body, streaming with usage."""
    chat = request.messages is not None
    out: dict[str, Any] = {
        "model": spec.upstream_model or model_id,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.messages is not None:
        out["messages"] = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                           for m in request.messages]
    else:
        out["prompt"] = request.prompt
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if seed is not None:
        out["seed"] = seed
    if request.stop:
        out["stop"] = request.stop
    if request.presence_penalty:
        out["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty:
        out["frequency_penalty"] = request.frequency_penalty
    if request.logit_bias:
        out["logit_bias"] = {str(k): v for k, v in request.logit_bias.items()}
    if request.logprobs is not None:
        if chat:
            out["logprobs"] = True
            out["top_logprobs"] = request.logprobs
        else:
            out["logprobs"] = request.logprobs
    for name, upstream_name in _EXTENSIONS[spec.dialect].items():
        value = getattr(request, name)
        if value != _DEFAULTS[name]:
            out[upstream_name] = value
    if request.template_kwargs:
        out["chat_template_kwargs"] = request.template_kwargs
    if request.user:
        out["user"] = request.user
    for constraint in request.constraints:
        if constraint.kind == "json_object":
            out["response_format"] = {"type": "json_object"}
        elif constraint.kind == "json_schema" and spec.dialect in _LLAMA_CPP_SCHEMA:
            out["response_format"] = {"type": "json_object", "schema": constraint.value}
        elif constraint.kind == "json_schema":
            out["response_format"] = {"type": "json_schema", "json_schema": {
                "name": constraint.options.get("name") or "output",
                "schema": constraint.value,
                "strict": bool(constraint.options.get("strict", True)),
            }}
        elif constraint.kind == "regex":
            out["guided_regex"] = constraint.value
        elif constraint.kind == "choice":
            out["guided_choice"] = constraint.value
    return ("/v1/chat/completions" if chat else "/v1/completions"), out


# -- verification ---------------------------------------------------------------

_lock = threading.Lock()
_validators: OrderedDict[str, Any] = OrderedDict()


def validator(schema: Any) -> Any:
    """A cached jsonschema validator (format checking on) for ``schema``;
    UnsupportedConstraint if it is not a valid schema."""
    key = json.dumps(schema, sort_keys=True)
    with _lock:
        hit = _validators.get(key)
        if hit is not None:
            return hit
    if not isinstance(schema, dict):
        raise UnsupportedConstraint("a json_schema constraint needs a schema object", param="response_format")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UnsupportedConstraint(f"the JSON schema is invalid: {exc.message}", param="response_format") from None
    found = cls(schema, format_checker=cls.FORMAT_CHECKER)
    with _lock:
        _validators[key] = found
        while len(_validators) > 256:
            _validators.popitem(last=False)
    return found


def verify(constraint: Constraint, text: str) -> str | None:
    """Why ``text`` does not satisfy ``constraint`` (None: it does)."""
    kind = constraint.kind
    if kind in ("json_schema", "json_object"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"not valid JSON: {exc}"
        if kind == "json_object":
            return None if isinstance(value, dict) else "not a JSON object"
        try:
            error = jsonschema.exceptions.best_match(validator(constraint.value).iter_errors(value))
        except RecursionError:
            return "the schema's references recurse without end on this value"
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"does not match the schema at {where}: {error.message}"
    if kind == "regex":
        return None if re.fullmatch(constraint.value, text) else "does not match the regex"
    if kind == "choice":
        return None if text in constraint.value else "is not one of the choices"
    return f"cannot verify a {kind} constraint"
