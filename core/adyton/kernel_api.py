"""``KernelAPI``: the part of the ``Kernel`` plugins may use — docs/kernel.md,
one method or attribute per section of that page (``tests/test_kernel_api.py``
checks that the first-party plugins use nothing else).

Each method here is a thin, documented entry into the kernel's own machinery
(the pipeline, the model registry, metrics), which stays private to the
kernel and may change. ``Kernel`` (``kernel.py``) inherits this class and
sets the attributes it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel

from .database import Database
from .errors import PluginError
from .hookspecs import Authenticator, Backend, Limiter, WireFormat
from .types import Credentials, EmbeddingRequest, EmbeddingResult, GenerationRequest, ModelInfo, Principal, Usage

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client import CollectorRegistry

    from .generation import Generation
    from .metrics import Metrics
    from .models import ModelRegistry
    from .pipeline import Pipeline
    from .settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: response headers of the kernel's own (AdytonError.response_headers)
KERNEL_EXPOSED_HEADERS = ("Retry-After", "x-should-retry")


class KernelAPI:
    """What plugins may use on the kernel (docs/kernel.md)."""

    # set by Kernel.__init__ / collect_catalogs
    settings: Settings
    home: Path
    backends: dict[str, Backend]
    wire_formats: dict[str, WireFormat]
    authenticators: list[Authenticator]
    limiters: list[Limiter]
    pipeline: Pipeline
    models: ModelRegistry
    metrics: Metrics
    _state: dict[Hashable, Any]
    _database: Database | None
    _services: dict[str, Any]

    # -- the pipeline's entry points ---------------------------------------------

    async def submit(self, request: GenerationRequest, credentials: Credentials) -> Generation:
        """Admit a generation and start it (docs/kernel.md#kernelsubmit)."""
        return await self.pipeline.submit(request, credentials)

    async def embed(self, request: EmbeddingRequest, credentials: Credentials) -> EmbeddingResult:
        """Embeddings through admission, limits and the engine queue."""
        return await self.pipeline.embed(request, credentials)

    async def hidden_states(self, inputs: list[str], layers: Sequence[int], model_name: str | None,
                            credentials: Credentials) -> tuple[ModelInfo, list[dict[int, np.ndarray]], Usage]:
        """The hidden states of ``inputs`` at ``layers``, admitted like ``embed``."""
        return await self.pipeline.hidden_states(inputs, layers, model_name, credentials)

    async def authenticate(self, credentials: Credentials) -> Principal:
        """Who is calling (anonymous without authenticators; else 401)."""
        return await self.pipeline.authenticate(credentials)

    async def authorize(self, credentials: Credentials, access: str) -> Principal:
        """The principal if ``credentials`` grant ``access``; else 401/403."""
        return await self.pipeline.authorize(credentials, access)

    # -- models --------------------------------------------------------------------

    def resolve_model(self, name: str | None) -> tuple[Backend, ModelInfo]:
        """The backend and model a request naming ``name`` runs on."""
        return self.models.resolve(name)

    def default_model(self) -> tuple[Backend, ModelInfo] | None:
        """The model loaded at start (``models.default``, else the first listed)."""
        return self.models.default_model()

    def list_models(self) -> list[tuple[Backend, ModelInfo]]:
        """Every model of every backend, ``loaded`` set on those in memory."""
        return self.models.list_models()

    def model_names(self) -> list[str]:
        """Every name a request may use (ids and aliases), sorted."""
        return self.models.names()

    # -- settings ------------------------------------------------------------------

    def section(self, name: str, cls: type[M]) -> M:
        """The validated ``[name]`` settings section as a ``cls``; ``cls()``
        (its defaults) when this app's settings have no such section."""
        value = getattr(self.settings, name, None) if name in type(self.settings).model_fields else None
        if value is None:
            return self.state(("adyton.section", name, cls), cls)
        if not isinstance(value, cls):
            raise PluginError(f"settings section '{name}' is a {type(value).__name__}, "
                              f"not the {cls.__name__} asked for (registered by another plugin?)")
        return value

    # -- the SQL database ------------------------------------------------------------

    @property
    def database(self) -> Database:
        """The kernel's SQL database (``[database] url``; default SQLite in
        ``$ADYTON_HOME/adyton.sqlite3``): an ``adyton.Database`` whose engine
        is created on first use and disposed at shutdown. Plugins keep their
        tables in it and declare them with ``register_migrations``."""
        if self._database is None:
            cfg = self.settings.database
            self._database = Database(cfg.url or f"sqlite:///{self.home / 'adyton.sqlite3'}",
                                      sqlite_synchronous=cfg.sqlite_synchronous, pool_size=cfg.pool_size,
                                      lock_timeout_s=cfg.lock_timeout_s)
        return self._database

    # -- state and services --------------------------------------------------------

    def state(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The object stored under ``key`` for this kernel, made by
        ``factory()`` on first use."""
        try:
            return self._state[key]
        except KeyError:
            value = self._state[key] = factory()
            return value

    def provide(self, name: str, service: object) -> None:
        """Offer ``service`` to other plugins as ``kernel.service(name)``."""
        current = self._services.get(name)
        if current is not None and current is not service:
            raise PluginError(f"service '{name}' is provided twice: {current!r} and {service!r}")
        self._services[name] = service

    def service(self, name: str) -> Any:
        """The object provided under ``name`` (``PluginError`` if none)."""
        try:
            return self._services[name]
        except KeyError:
            provided = ", ".join(sorted(self._services)) or "none"
            raise PluginError(f"no installed plugin provides the service '{name}' (provided: {provided})") from None

    # -- HTTP extras ---------------------------------------------------------------

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The app's Prometheus registry (served at ``/metrics``)."""
        return self.metrics.registry

    def exposed_headers(self) -> list[str]:
        """The kernel's own response headers and every registered object's
        ``exposed_headers``, each once, in registration order."""
        names: dict[str, None] = dict.fromkeys(KERNEL_EXPOSED_HEADERS)
        catalogs: list[Any] = [*self.backends.values(), *self.wire_formats.values(),
                               *self.authenticators, *self.limiters]
        for obj in catalogs:
            declared = getattr(obj, "exposed_headers", ())
            if isinstance(declared, str):
                raise PluginError(f"{type(obj).__name__}.exposed_headers must be a sequence of names, not a string")
            names.update(dict.fromkeys(declared))
        return list(names)
