"""OpenAPI: the operation helper wire formats declare their routes with
(``json_operation``) and the completion every served document gets
(``Kernel.complete_openapi``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


def json_operation(summary: str, request: dict[str, Any] | None = None, response: dict[str, Any] | None = None,
                   status: int = 200) -> dict[str, Any]:
    """An OpenAPI operation for ``WireFormat.openapi_operations``: a JSON
    ``request`` body schema (None: no body) and the JSON ``response`` schema
    of its success ``status``."""
    operation: dict[str, Any] = {"summary": summary}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
    success: dict[str, Any] = {"description": "Success"}
    if response is not None:
        success["content"] = {"application/json": {"schema": response}}
    operation["responses"] = {str(status): success}
    return operation


_STATUS_PHRASES = {
    400: "Invalid request", 401: "Missing or invalid credentials", 403: "Not allowed",
    404: "Not found", 405: "Method not allowed", 413: "Request body too large",
    415: "Unsupported media type", 429: "Rate limited or server busy (Retry-After)",
    500: "The engine failed", 503: "Could not start in time, or no model loaded (Retry-After)",
}


def complete_openapi(kernel: Kernel, document: dict[str, Any]) -> dict[str, Any]:
    """Fill in what an OpenAPI ``document`` leaves out: every operation
    gets what the surface that owns its path declares for it
    (``WireFormat.openapi_operations``: request body, responses), that
    surface's error statuses (``WireFormat.error_statuses``, with its
    ``error_schema``), and a ``2XX`` success if it documents none. Whichever plugin serves the
    document calls this, so clients see every status a route answers."""
    for path, operations in document.get("paths", {}).items():
        wire = kernel.wire_format_for(path)
        declared = wire.openapi_operations.get(path, {}) if wire is not None else {}
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            own = declared.get(method, {})
            for key, value in own.items():
                if key != "responses":
                    operation.setdefault(key, value)
            # OpenAPI keys are strings ("200", "2XX"); some generators write ints
            responses = {str(code): value for code, value in operation.get("responses", {}).items()}
            for code, value in own.get("responses", {}).items():
                responses.setdefault(str(code), value)
            operation["responses"] = responses
            if not any(str(code).startswith("2") for code in responses):
                responses["2XX"] = {"description": "Success"}
            for status in (wire.error_statuses if wire is not None else ()):
                if str(status) in responses:
                    continue
                entry: dict[str, Any] = {"description": _STATUS_PHRASES.get(status, "Error")}
                if wire is not None and wire.error_schema is not None:
                    entry["content"] = {"application/json": {"schema": wire.error_schema}}
                responses[str(status)] = entry
    return document
