"""``create_app``: one Quart app, one plugin manager, one kernel.

The ``Kernel`` is what plugins get handed: settings, the plugin manager, the
registered catalog objects, the model registry, the pipeline and metrics.
"""

from __future__ import annotations

import asyncio
import gc
import functools
import ipaddress
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel
from quart import Quart, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import (
    AdytonError,
    BackendError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PluginError,
    ServiceUnavailable,
)
from .hookspecs import Authenticator, Backend, Limiter, WireFormat
from .pipeline import Pipeline, close_orphans, resolve_all
from .plugins import PluginManager, build_plugin_manager
from .queue import EngineJob, EngineQueue
from .settings import Settings, load_settings
from .types import Credentials, ModelInfo, Principal

log = logging.getLogger("adyton")


class Metrics:
    """Prometheus metrics of one app (its own registry: no globals)."""

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_waiting = Gauge("adyton_queue_waiting", "Requests waiting for an engine", ["backend"], registry=r)
        self.queue_running = Gauge("adyton_queue_running", "Requests running on an engine", ["backend"], registry=r)
        self.rejections = Counter("adyton_rejections_total", "Requests refused, by reason", ["reason", "wire_format"], registry=r)
        self.requests = Counter("adyton_requests_total", "Generations that ended, by outcome", ["outcome", "wire_format"], registry=r)
        self.cut_short_total = Counter(
            "adyton_cut_short_total", "Choices ended early by the server: time_budget or repetition",
            ["reason", "wire_format"], registry=r)
        self.prompt_tokens = Counter("adyton_prompt_tokens_total", "Prompt tokens of admitted requests", registry=r)
        self.completion_tokens = Counter("adyton_completion_tokens_total", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "adyton_time_to_first_token_seconds", "From engine start to the first token", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.tokens_per_second = Histogram(
            "adyton_decode_tokens_per_second", "Decode speed per choice", registry=r,
            buckets=(1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000),
        )

    def cut_short(self, reason: str, wire_format: str) -> None:
        self.cut_short_total.labels(reason, wire_format or "-").inc()

    def rejected(self, exc: AdytonError, wire_format: str) -> None:
        self.rejections.labels(exc.code or exc.type, wire_format or "-").inc()

    def finished(self, generation: Any, outcome: str) -> None:
        self.requests.labels(outcome, generation.wire_format or "-").inc()
        if outcome != "rejected":
            self.prompt_tokens.inc(generation.usage.prompt_tokens)
            self.completion_tokens.inc(generation.usage.completion_tokens)

    def observe_generation(self, ttft_s: float, tokens: int, decode_s: float) -> None:
        self.ttft.observe(ttft_s)
        if tokens > 1 and decode_s > 0:
            self.tokens_per_second.observe((tokens - 1) / decode_s)

    def refresh(self) -> None:
        for name, queue in self.kernel.queues.items():
            self.queue_waiting.labels(name).set(queue.waiting)
            self.queue_running.labels(name).set(queue.running)


class ModelRegistry:
    """Which backend serves which model; names, aliases and the loaded model."""

    #: how long a backend's model list is trusted before it is asked again
    CATALOG_TTL_S = 2.0

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self.loading: str | None = None  #: model id being loaded at start
        self.load_error: str | None = None
        self._catalog: list[tuple[Backend, ModelInfo]] = []
        self._catalog_at = float("-inf")

    def _entries(self, refresh: bool = False) -> list[tuple[Backend, ModelInfo]]:
        """(backend, model) pairs, with backend names and aliases filled in."""
        now = time.monotonic()
        if refresh or now - self._catalog_at > self.CATALOG_TTL_S:
            aliases = self.kernel.settings.models.aliases
            catalog = []
            for backend in self.kernel.backends.values():
                for info in backend.list_models():
                    extra = [alias for alias, target in aliases.items() if target == info.id]
                    catalog.append((backend, info.model_copy(update={
                        "backend": backend.name,
                        "aliases": sorted(set(info.aliases) | set(extra)),
                    })))
            self._catalog, self._catalog_at = catalog, now
        return self._catalog

    def list(self) -> list[tuple[Backend, ModelInfo]]:
        """Every model, with ``loaded`` telling which are in memory now."""
        return [
            (backend, info.model_copy(update={"loaded": info.id == backend.loaded_model()}))
            for backend, info in self._entries(refresh=True)
        ]

    def names(self) -> list[str]:
        return sorted({info.id for _, info in self._entries()} | set(self.kernel.settings.models.aliases))

    def resolve(self, name: str | None) -> tuple[Backend, ModelInfo]:
        if not name:
            for backend in self.kernel.backends.values():
                loaded = backend.loaded_model()
                if loaded is not None:
                    return self.resolve(loaded)
            if self.loading:
                # the load holds the engine: this request queues behind it
                return self.resolve(self.loading)
            default = self.kernel.settings.models.default
            if default:
                return self.resolve(default)
            names = ", ".join(self.names()) or "none installed"
            raise ServiceUnavailable(
                f"no model is loaded: name one in the request's 'model' field (available: {names})",
                code="no_model_loaded", retry_after=30,
            )
        target = self.kernel.settings.models.aliases.get(name, name)
        for refresh in (False, True):
            for backend, info in self._entries(refresh):
                if target == info.id or target in info.aliases or target == f"{info.owned_by}/{info.id}":
                    return backend, info
        names = ", ".join(self.names()) or "none installed"
        raise ModelNotFound(f"The model '{name}' does not exist (available: {names})", param="model")

    def default_model(self) -> tuple[Backend, ModelInfo] | None:
        default = self.kernel.settings.models.default
        if default:
            return self.resolve(default)
        models = self.list()
        return models[0] if models else None

    def load_blocking(self, backend: Backend, model_id: str) -> None:
        """Switch ``backend`` to ``model_id``. Runs on one of its engine threads."""
        if backend.loaded_model() == model_id:
            return
        log.info("loading model %s on backend %s", model_id, backend.name)
        try:
            backend.load_model(model_id)
        except AdytonError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"could not load model '{model_id}': {exc}") from exc


class Kernel:
    """Everything one app's plugins share. Handed to most hooks."""

    def __init__(self, settings: Settings, pm: PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.home = Path(settings.home).expanduser()
        self.app: Quart | None = None
        self.backends: dict[str, Backend] = {}
        self.wire_formats: dict[str, WireFormat] = {}
        self.authenticators: list[Authenticator] = []
        self.limiters: list[Limiter] = []
        self.queues: dict[str, EngineQueue] = {}
        self.models = ModelRegistry(self)
        self.metrics = Metrics(self)
        self.pipeline = Pipeline(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: ThreadPoolExecutor | None = None

    async def offload(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the kernel's worker threads, so blocking
        per-request CPU work (tokenizing a big prompt, parsing a big body,
        compiling a constraint) does not stall the event loop — ``/health``
        and every other client keep being answered. A fixed pool of
        ``server.worker_threads`` threads: a flood of requests waits for one
        instead of creating threads. Exceptions propagate to the caller."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=self.settings.server.worker_threads,
                                               thread_name_prefix="adyton-worker")
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._workers, call)

    # -- catalogs ---------------------------------------------------------------

    def _collect(self, hook_name: str, kind: type, store: Callable[[str, Any], None]) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            owner = impl.plugin_name

            def register(obj: Any, _owner: str = owner) -> None:
                if not isinstance(obj, kind):
                    raise PluginError(f"plugin '{_owner}' registered {obj!r}, which is not a {kind.__name__}")
                name = getattr(obj, "name", "")
                if not name:
                    raise PluginError(f"plugin '{_owner}' registered a {kind.__name__} without a name")
                obj._adyton_plugin = _owner
                store(name, obj)

            try:
                impl.function(**{arg: {"register": register, "kernel": self}[arg] for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"plugin '{owner}' failed in {hook_name}: {type(exc).__name__}: {exc}") from exc

    def _store_unique(self, catalog: dict[str, Any], what: str) -> Callable[[str, Any], None]:
        def store(name: str, obj: Any) -> None:
            if name in catalog:
                raise PluginError(
                    f"{what} '{name}' is registered twice: by plugin '{catalog[name]._adyton_plugin}' "
                    f"and by plugin '{obj._adyton_plugin}'"
                )
            catalog[name] = obj
        return store

    def collect_catalogs(self) -> None:
        self._collect("register_backends", Backend, self._store_unique(self.backends, "backend"))
        self._collect("register_wire_formats", WireFormat, self._store_unique(self.wire_formats, "wire format"))
        auth: dict[str, Authenticator] = {}
        self._collect("register_authenticators", Authenticator, self._store_unique(auth, "authenticator"))
        self.authenticators = list(auth.values())
        limiters: dict[str, Limiter] = {}
        self._collect("register_limiters", Limiter, self._store_unique(limiters, "limiter"))
        self.limiters = list(limiters.values())
        for name, backend in self.backends.items():
            self.queues[name] = EngineQueue(
                name,
                concurrency=max(1, int(backend.max_concurrency)),
                max_waiting=self.settings.queue.max_waiting,
                max_wait_s=self.settings.queue.max_wait_s,
            )

    def wire_format_for(self, path: str) -> WireFormat | None:
        """The surface whose ``url_prefixes`` match ``path`` longest (its
        slashes merged), else the kernel's own routes: the one that renders
        errors for that path."""
        path = re.sub("/{2,}", "/", path)
        best: WireFormat | None = None
        best_len = -1
        for wire in self.wire_formats.values():
            for prefix in wire.url_prefixes:
                if path.startswith(prefix) and len(prefix) > best_len:
                    best, best_len = wire, len(prefix)
        return best if best is not None else self.wire_formats.get("kernel")

    def complete_openapi(self, document: dict[str, Any]) -> dict[str, Any]:
        """Fill in what an OpenAPI ``document`` leaves out: every operation
        gets what the surface that owns its path declares for it
        (``WireFormat.openapi_operations``: request body, responses), that
        surface's error statuses (``WireFormat.error_statuses``, with its
        ``error_schema``), and a ``2XX`` success if it documents none. Whichever plugin serves the
        document calls this, so clients see every status a route answers."""
        for path, operations in document.get("paths", {}).items():
            wire = self.wire_format_for(path)
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

    def queue_for(self, backend: Backend) -> EngineQueue:
        return self.queues[backend.name]

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ----------------------------------------------------------------

    async def startup(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.authenticators and not _is_loopback(self.settings.server.host):
            log.warning(
                "no auth plugin is installed and the server binds %s: anyone who can reach it "
                "may use it (install adyton-limits, or bind 127.0.0.1)",
                self.settings.server.host,
            )
        for impl in self.pm.hook.startup.get_hookimpls():
            try:
                await resolve_all([impl.function(kernel=self)])
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"plugin '{impl.plugin_name}' failed at startup: {type(exc).__name__}: {exc}") from exc
        if self.settings.models.load_at_start:
            self._start_default_load()
        # everything built so far (modules, plugins, settings, routes) lives as
        # long as the server: keep it out of the cyclic collector's full
        # passes, which otherwise stall every request in flight for tens of
        # ms (shutdown gives it back, so a process that serves several apps in
        # turn, as the tests do, can still collect a finished one)
        gc.collect()
        gc.freeze()

    def _start_default_load(self) -> None:
        try:
            found = self.models.default_model()
        except AdytonError as exc:
            self.models.load_error = exc.message
            log.error("default model: %s", exc.message)
            return
        if found is None:
            return
        backend, info = found
        if backend.loaded_model() == info.id:
            return
        self.models.loading = info.id

        async def load() -> None:
            # a job like any other, so requests queue behind the load
            job = EngineJob(lambda: self.models.load_blocking(backend, info.id))
            queue = self.queue_for(backend)
            try:
                queue.submit(job)
                await job.wait_done()
                log.info("model %s is loaded", info.id)
            except AdytonError as exc:
                self.models.load_error = exc.message
                log.error("could not load the default model: %s", exc.message)
            finally:
                self.models.loading = None

        task = asyncio.get_running_loop().create_task(load(), name="adyton-load-default")
        self.track(task)

    async def shutdown(self) -> None:
        grace = self.settings.server.shutdown_grace_s
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        for impl in self.pm.hook.shutdown.get_hookimpls():
            try:
                await resolve_all([impl.function(kernel=self)])
            except Exception:  # noqa: BLE001
                log.exception("plugin '%s' failed at shutdown", impl.plugin_name)
        for backend in self.backends.values():
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                log.exception("backend '%s' failed to close", backend.name)
        for queue in self.queues.values():
            await asyncio.get_running_loop().run_in_executor(None, queue.close)
        gc.unfreeze()
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None


_STATUS_PHRASES = {
    400: "Invalid request", 401: "Missing or invalid credentials", 403: "Not allowed",
    404: "Not found", 405: "Method not allowed", 413: "Request body too large",
    415: "Unsupported media type", 429: "Rate limited or server busy (Retry-After)",
    500: "The engine failed", 503: "Could not start in time, or no model loaded (Retry-After)",
}


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _settings_sections(pm: PluginManager) -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for impl in pm.hook.register_settings.get_hookimpls():
        def register(name: str, model: type, _owner: str = impl.plugin_name) -> None:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise PluginError(f"plugin '{_owner}' registered settings '{name}' that are not a pydantic model")
            if name in sections:
                raise PluginError(f"settings section '{name}' is registered twice (again by plugin '{_owner}')")
            sections[name] = model
        impl.function(register=register)
    return sections


def create_app(
    settings: dict[str, Any] | Settings | None = None,
    plugins: Iterable[Any] = (),
    load_entrypoints: bool = True,
    config: str | os.PathLike | None = None,
) -> Quart:
    """Build an app with its own plugin manager.

    ``settings``: overrides (a dict like ``{"queue": {"max_waiting": 2}}``).
    ``plugins``: plugin objects/modules registered in addition to (or, with
    ``load_entrypoints=False``, instead of) the installed ones.
    Raises ``PluginError`` / ``SettingsError`` naming what is wrong.
    """
    pm = build_plugin_manager(plugins, load_entrypoints=load_entrypoints)
    sections = _settings_sections(pm)
    if isinstance(settings, Settings):
        resolved = settings
    else:
        resolved = load_settings(sections, overrides=settings or {}, config=config)
    kernel = Kernel(resolved, pm)
    kernel.collect_catalogs()

    app = Quart("adyton")
    app.config["MAX_CONTENT_LENGTH"] = resolved.server.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # "//v1/models" is no route: a JSON 404 in the surface's shape, not
    # werkzeug's HTML 308 redirect to the merged path
    app.url_map.merge_slashes = False
    app.extensions["adyton"] = kernel
    kernel.app = app
    # nothing keeps generating for a request the server is done with
    app.asgi_app = close_orphans(app.asgi_app)  # type: ignore[method-assign]

    for wire in kernel.wire_formats.values():
        _mount(app, wire)

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

    _install_cors(app, resolved.server.cors_origins)

    @app.before_serving
    async def _startup() -> None:
        await kernel.startup()

    @app.after_serving
    async def _shutdown() -> None:
        await kernel.shutdown()

    return app


def _mount(app: Quart, wire: WireFormat) -> None:
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

    app.register_blueprint(blueprint)
    wire.init_app(app)


def _render_for_path(kernel: Kernel, error: AdytonError) -> Response:
    best = kernel.wire_format_for(request.path if request else "/")
    if best is None:  # pragma: no cover - the kernel routes are always registered
        return default_error_response(error)
    return best.render_error(error)


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


_EXPOSED = "Retry-After, x-should-retry, x-request-id, x-adyton-ignored-params, x-adyton-guided, " \
           "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, " \
           "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"


def _install_cors(app: Quart, origins: list[str]) -> None:
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


def current_kernel() -> Kernel:
    """The kernel of the app handling the current request."""
    return current_app.extensions["adyton"]


async def require_access(route: str, credentials: Credentials | None = None) -> Principal:
    """For a read-only route: check that the caller has the access the
    ``[access]`` setting ``route`` ("models", "server_info", "metrics")
    demands, asking the authenticators (``Authenticator.authorize``).
    ``credentials`` default to the request's API-key headers
    (``Credentials.from_headers``); a wire format with its own way of reading
    them passes its own. Returns the principal; raises ``Unauthorized`` /
    ``Forbidden``, which the route's wire format renders."""
    kernel = current_kernel()
    access = getattr(kernel.settings.access, route)
    if credentials is None:
        credentials = Credentials.from_headers(request.headers, wire_format="",
                                               client_address=request.remote_addr)
    return await kernel.pipeline.authorize(credentials, access)
