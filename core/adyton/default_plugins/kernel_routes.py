"""The kernel's own HTTP surface: ``/health``, ``/metrics``, ``/-/plugins``,
``/-/models``. ``/health`` is open; the others need the access the
``[access]`` settings name (``metrics``, ``server_info``) while an auth
plugin is installed. Errors anywhere outside a wire format's prefixes are rendered
in this surface's plain shape: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, jsonify

from ..access import require_access
from ..errors import AdytonError
from ..hookspecs import WireFormat, hookimpl
from ..http_errors import DEFAULT_ERROR_SCHEMA, default_error_response
from ..kernel import current_kernel


class KernelRoutes(WireFormat):
    name = "kernel"
    url_prefixes = ("/-/",)
    error_schema = DEFAULT_ERROR_SCHEMA

    def __init__(self) -> None:
        bp = Blueprint("adyton_kernel", __name__)
        bp.add_url_rule("/health", "health", self.health, methods=["GET"])
        bp.add_url_rule("/metrics", "metrics", self.metrics, methods=["GET"])
        bp.add_url_rule("/-/plugins", "plugins", self.plugins, methods=["GET"])
        bp.add_url_rule("/-/models", "models", self.models, methods=["GET"])
        self._blueprint = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._blueprint

    def render_error(self, error: AdytonError) -> Response:
        return default_error_response(error)

    async def health(self) -> Response:
        kernel = current_kernel()
        models = kernel.models
        loaded = [info.id for _, info in models.list_models() if info.loaded]
        if models.loading:
            response = jsonify({"status": "loading", "model": models.loading})
            response.status_code = 503
            response.headers["Retry-After"] = "5"
            return response
        body = {"status": "ok", "loaded_models": loaded}
        if models.load_error:
            body["status"] = "degraded"
            body["error"] = models.load_error
        return jsonify(body)

    async def metrics(self) -> Response:
        await require_access("metrics")
        kernel = current_kernel()
        kernel.metrics.refresh()
        return Response(generate_latest(kernel.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    async def plugins(self) -> Response:
        await require_access("server_info")
        return jsonify({"plugins": current_kernel().pm.describe()})

    async def models(self) -> Response:
        await require_access("server_info")
        kernel = current_kernel()
        return jsonify({"models": [info.model_dump() for _, info in kernel.list_models()]})


@hookimpl(trylast=True)
def register_wire_formats(register, kernel):
    register(KernelRoutes())
