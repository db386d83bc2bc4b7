"""CORS: the ``server.cors_origins`` setting — preflight answers and the
headers a browser may read."""

from __future__ import annotations

from quart import Quart, Response, request


_EXPOSED = "Retry-After, x-should-retry, x-request-id, x-adyton-ignored-params, x-adyton-guided, " \
           "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, " \
           "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"


def install_cors(app: Quart, origins: list[str]) -> None:
    if not origins:
        return
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
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED
            response.headers["Vary"] = "Origin"
        return response

