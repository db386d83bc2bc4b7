"""HTTP errors: every error a request can meet, rendered in the shape of
the wire format that owns the path — werkzeug's HTTP errors (404, 405, 413,
...) mapped to ``AdytonError``, the handlers on the app and on each wire
format's blueprint, and the kernel's own error body
(``default_error_response``, ``DEFAULT_ERROR_SCHEMA``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import AdytonError, BackendError, InvalidRequest, NotFound, PayloadTooLarge
from .hookspecs import WireFormat

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel

log = logging.getLogger("adyton")


def _http_error_to_adyton(exc: HTTPException) -> AdytonError:
    code = exc.code or 500
    description = exc.description or exc.name
    if code == 413:
        return PayloadTooLarge(f"request body too large: {description}")
    if code == 404:
        return NotFound(f"no route for {request.method} {request.path}")
    if code == 405:
        err = InvalidRequest(f"method {request.method} is not allowed on {request.path}", code="method_not_allowed")
        err.status = 405
        return err
    if 400 <= code < 500:
        err = InvalidRequest(description)
        err.status = code
        return err
    return BackendError(description)


def install_error_handlers(app: Quart, kernel: Kernel) -> None:
    """The app's handlers: an error outside any blueprint (no route, a
    kernel route) is rendered by the wire format whose prefix matches."""

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return _render_for_path(kernel, _http_error_to_adyton(exc))

    @app.errorhandler(AdytonError)
    async def _adyton_error(exc: AdytonError) -> Response:
        return _render_for_path(kernel, exc)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render_for_path(kernel, BackendError("internal server error"))


def install_wire_error_handlers(wire: WireFormat) -> None:
    """The handlers on ``wire``'s blueprint: its routes' errors in its shape."""
    blueprint = wire.blueprint

    @blueprint.errorhandler(AdytonError)
    async def _adyton_error(exc: AdytonError) -> Response:
        return wire.render_error(exc)

    @blueprint.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return wire.render_error(_http_error_to_adyton(exc))

    @blueprint.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in wire format %s on %s", wire.name, request.path)
        return wire.render_error(BackendError("internal server error"))


def _render_for_path(kernel: Kernel, error: AdytonError) -> Response:
    best = kernel.wire_format_for(request.path if request else "/")
    if best is None:  # pragma: no cover - the kernel routes are always registered
        return default_error_response(error)
    return best.render_error(error)


#: JSON schema of ``default_error_response``'s body (``WireFormat.error_schema``)
DEFAULT_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}},
    }},
}


def default_error_response(error: AdytonError) -> Response:
    body: dict[str, Any] = {"message": error.message, "type": error.type, "code": error.code}
    if error.param is not None:
        body["param"] = error.param
    response = jsonify({"error": body})
    response.status_code = error.status
    for key, value in error.response_headers().items():
        response.headers[key] = value
    return response

