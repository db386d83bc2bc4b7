"""Typed errors. Raise them anywhere on the request path; the wire format that
owns the route renders them in its own shape with the right HTTP status.

Each error carries what every wire format needs: an HTTP ``status``, an
OpenAI-style ``type`` and optional ``code`` and ``param``, a human
``message``, ``retry_after`` seconds where a retry makes sense, and extra
``headers`` (rate-limit headers, for instance)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class AdytonError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        """Headers every rendering of this error should carry."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class InvalidRequest(AdytonError):
    """400: the request is malformed or asks for something impossible."""

    status = 400
    type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    """400: prompt + max_tokens do not fit the model's context."""

    code = "context_length_exceeded"


class UnsupportedConstraint(InvalidRequest):
    """400: a constraint no installed plugin can enforce, or that does not compile."""

    code = "unsupported_constraint"


class Unauthorized(AdytonError):
    """401: missing, malformed or unknown credentials, or a disabled account."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(AdytonError):
    """403: authenticated but not allowed (e.g. the admin API without the admin key)."""

    status = 403
    type = "permission_error"


class NotFound(AdytonError):
    """404: no such route or resource."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """404: the request named a model no backend serves."""

    code = "model_not_found"


class PayloadTooLarge(AdytonError):
    """413: the request body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(AdytonError):
    """429: a per-principal limit. ``should_retry`` is False when a daily
    quota is spent (clients should not hammer until the reset)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, should_retry: bool = True, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.should_retry = should_retry

    def response_headers(self) -> dict[str, str]:
        headers = super().response_headers()
        if not self.should_retry:
            headers["x-should-retry"] = "false"
        return headers


class ServerBusy(RateLimited):
    """429: too many requests already wait for the engine."""

    code = "server_busy"


class ServiceUnavailable(AdytonError):
    """503: the request could not start in time, or no model is loaded."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class BackendError(AdytonError):
    """500: the engine failed while serving the request."""

    status = 500
    type = "server_error"
    code = "backend_error"


class BadGateway(AdytonError):
    """502: a remote engine (an upstream of a self-sampling backend) answered
    with garbage, cut its stream, or produced output that failed
    verification. The message names the model."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class GatewayTimeout(AdytonError):
    """504: a remote engine did not answer in time. The message names the
    model."""

    status = 504
    type = "server_error"
    code = "upstream_timeout"


def json_type_name(value: Any) -> str:
    """Name a parsed JSON value's type for an error message, as a wire format
    says what it got: ``"null"``, ``"a boolean"``, ``"a number"``, ``"a
    string"``, ``"an array"`` or ``"an object"``.

    ``raise InvalidRequest(f"'messages' must be an array, not {json_type_name(v)}")``
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # not from json.loads


def invalid_from_validation(exc: Any, *, prefix: str | None = None,
                            rename: Mapping[str, str] | None = None,
                            param: str | None = None) -> InvalidRequest:
    """The first error of a pydantic ``ValidationError`` as an
    ``InvalidRequest`` naming the field the caller wrote: ``"unsupported
    field 'policy.x'"`` or ``"invalid 'max_new_tokens': ..."``.

    ``prefix``: the caller's name for the validated object (``"policy"``);
    ``rename``: the kernel's field name -> the caller's (``{"max_tokens":
    "max_new_tokens"}``); ``param``: the error's ``param`` (default: the
    field). ``raise invalid_from_validation(exc, ...) from None``"""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    loc = (rename or {}).get(loc, loc)
    where = f"{prefix}.{loc}" if prefix else loc
    message = (f"unsupported field '{where}'" if err["type"] == "extra_forbidden"
               else f"invalid '{where}': {err['msg']}")
    return InvalidRequest(message, param=param or where)


class PluginError(Exception):
    """A plugin failed to load or validate; stops startup. Not an HTTP error."""


class SettingsError(Exception):
    """Invalid settings; stops startup with the key named."""


__all__ = [
    "AdytonError",
    "BackendError",
    "BadGateway",
    "ContextTooLong",
    "Forbidden",
    "GatewayTimeout",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PluginError",
    "RateLimited",
    "ServerBusy",
    "ServiceUnavailable",
    "SettingsError",
    "Unauthorized",
    "UnsupportedConstraint",
    "json_type_name",
]
