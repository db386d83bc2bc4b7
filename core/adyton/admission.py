"""Admission of a generation, after ``access.py`` authenticated it: the
``prepare_request`` hooks (extension parameters, policies), ``Backend.prepare``
(template and tokenize), the checks on a request's ``steering`` / ``observer``
and its room in the context (``max_tokens``). Each refuses with an
``AdytonError`` before anything is counted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ContextTooLong, InvalidRequest
from .hookspecs import Backend
from .plugins import resolve_all
from .types import GenerationRequest, PreparedPrompt, Principal

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


#: prompts up to this many characters are prepared on the event loop
INLINE_PREPARE_CHARS = 8192


def _text_chars(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(m.content) for m in request.messages)
    return len(request.prompt or "")


async def run_prepare_request(kernel: Kernel, request: GenerationRequest, principal: Principal) -> None:
    """The ``prepare_request`` hooks; then every extension parameter left in
    ``request.extra`` is one no plugin handles (400 naming it)."""
    hook = kernel.pm.hook
    if hook.prepare_request.get_hookimpls():
        await resolve_all(hook.prepare_request(request=request, principal=principal, kernel=kernel))
    if request.extra:
        names = ", ".join(repr(k) for k in sorted(request.extra))
        raise InvalidRequest(
            f"no installed plugin handles the parameter(s) {names}",
            param=sorted(request.extra)[0], code="unsupported_parameter",
        )


async def prepare(kernel: Kernel, backend: Backend, request: GenerationRequest, model: Any) -> PreparedPrompt:
    """``Backend.prepare``: on the kernel's worker threads for a big
    prompt (templating and tokenizing megabytes takes seconds, during
    which the loop would answer nobody), inline for a small one (cheaper
    than the thread hop)."""
    if _text_chars(request) <= INLINE_PREPARE_CHARS:
        return backend.prepare(request, model)
    return await kernel.offload(backend.prepare, request, model)


def check_hidden(request: GenerationRequest, backend: Backend, model: Any,
                 prepared: PreparedPrompt) -> None:
    """A request's ``steering`` / ``observer`` must be honoured by its
    backend (400 naming the model otherwise), then travel with the prompt."""
    steering, observer = request.steering, request.observer
    if steering is not None:
        allowed = backend.steering_layers(model)
        if allowed is None:
            raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') cannot be steered",
                                 param=steering.source, code="model_not_supported")
        if steering.model != model.id:
            raise InvalidRequest(f"this steering vector was made for model '{steering.model}', "
                                 f"not '{model.id}'", param=steering.source, code="invalid_value")
        bad = sorted(set(steering.vectors) - set(allowed))
        if bad:
            raise InvalidRequest(f"model '{model.id}' cannot be steered at layer(s) "
                                 f"{', '.join(map(str, bad))}", param=steering.source, code="invalid_value")
    if observer is not None:
        shape = backend.hidden_layers(model)
        if shape is None:
            raise InvalidRequest(f"model '{model.id}' (backend '{backend.name}') does not expose "
                                 f"hidden states", param="model", code="model_not_supported")
        bad = sorted(layer for layer in observer.layers if not 0 <= layer < shape[0])
        if bad:
            raise InvalidRequest(f"model '{model.id}' has {shape[0]} layers; layer(s) "
                                 f"{', '.join(map(str, bad))} do not exist", code="invalid_value")
    prepared.steering, prepared.observer = steering, observer


def max_tokens_for(request: GenerationRequest, prepared: PreparedPrompt) -> int:
    room = prepared.context_length - prepared.n_tokens
    if room <= 0:
        raise ContextTooLong(
            f"the prompt is {prepared.n_tokens} tokens; the context of model "
            f"'{prepared.model.id}' is {prepared.context_length} tokens",
            param="messages" if request.messages is not None else "prompt",
        )
    if request.max_tokens is None:
        return room
    if request.max_tokens > room:
        if request.fit_context:
            return room
        raise ContextTooLong(
            f"this model's maximum context length is {prepared.context_length} tokens; "
            f"the prompt uses {prepared.n_tokens} and max_tokens asks for "
            f"{request.max_tokens} more",
            param="max_tokens",
        )
    return request.max_tokens
