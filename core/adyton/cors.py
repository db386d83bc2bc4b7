"""CORS: the ``server.cors_origins`` setting — preflight answers and the
headers a browser may read."""

from __future__ import annotations

from collections.abc import Sequence

from quart import Quart, Response, request


def install_cors(app: Quart, origins: list[str], exposed: Sequence[str]) -> None:
    """CORS for ``origins``; ``exposed``: the response headers a browser may
    read (``Kernel.exposed_headers()``: the kernel's and those every
    registered object declares in its ``exposed_headers``)."""
    if not origins:
        return
    exposed_value = ", ".join(exposed)
    allow_any = "*" in origins

    def allowed(origin: str | None) -> str | None:
        if not origin:
            return None
        if allow_any:
            return "*"
        return origin if origin in origins else None

    @app.before_request
    async def _preflight() -> Response | None:
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response = Response("", status=204)
            origin = allowed(request.headers.get("Origin"))
            if origin:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                    "Access-Control-Request-Headers", "authorization, content-type, x-api-key")
                response.headers["Access-Control-Max-Age"] = "600"
                response.headers["Vary"] = "Origin"
            return response
        return None

    @app.after_request
    async def _cors(response: Response) -> Response:
        origin = allowed(request.headers.get("Origin"))
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = exposed_value
            response.headers["Vary"] = "Origin"
        return response

