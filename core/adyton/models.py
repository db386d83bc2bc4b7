"""``ModelRegistry``: which backend serves which model — names, aliases, the
default model and loading a model onto its backend."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .errors import AdytonError, BackendError, ModelNotFound, ServiceUnavailable
from .hookspecs import Backend
from .types import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel

log = logging.getLogger("adyton")


class ModelRegistry:
    """Which backend serves which model; names, aliases and the loaded model."""

    #: how long a backend's model list is trusted before it is asked again
    CATALOG_TTL_S = 2.0

    def __init__(self, kernel: Kernel) -> None:
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

    def list_models(self) -> list[tuple[Backend, ModelInfo]]:
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
        models = self.list_models()
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
        except Exception as exc:
            raise BackendError(f"could not load model '{model_id}': {exc}") from exc

