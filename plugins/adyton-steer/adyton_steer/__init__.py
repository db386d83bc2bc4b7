"""adyton-steer: steering vectors and SAE-monitored generation.

* ``steering_vector_id`` / ``steering_strength`` on any generation request
  (``request.extra``, popped here in ``prepare_request``) become the
  request's ``Steering``; the kernel refuses it with 400 on a backend that
  cannot steer the model (adyton-llamacpp can).
* ``/v1/steering_vectors`` (make from contrastive prompts or upload a
  llama.cpp control-vector GGUF; list, show, download, delete, share) and
  ``/sae/generate`` + ``/sae/behaviors``: see ``wire``.

Pieces: ``store`` (vectors on disk, the GGUF format), ``sae`` (behaviors),
``wire`` (the routes).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from adyton import Database, GenerationRequest, InvalidRequest, Principal, Steering, hookimpl

from .sae import BehaviorStore
from .store import VectorStore

if TYPE_CHECKING:  # pragma: no cover
    from adyton import Kernel


class SteerSettings(BaseModel):
    """The ``[steer]`` settings section."""

    dir: Path | None = Field(None,
                             description="Where steering vectors and SAE behaviors are kept (default: "
                                         "$ADYTON_HOME/steer).")
    max_strength: float = Field(10.0, gt=0, description="steering_strength must lie in [-max_strength, max_strength].")
    max_prompts: int = Field(64, ge=1, description="Most positive + negative prompts one computed vector may read.")
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024,
                                  description="Largest control-vector GGUF accepted by POST /v1/steering_vectors.")


class _Stores:
    def __init__(self, database: Database, root: Path) -> None:
        # vectors: the kernel's database (files of earlier releases under root imported once)
        self.vectors = VectorStore(database, legacy_root=root)
        self.behaviors = BehaviorStore(root)


def settings(kernel: Kernel) -> SteerSettings:
    return kernel.section("steer", SteerSettings)


def stores(kernel: Kernel) -> _Stores:
    """The kernel's stores (one app per kernel; tests run several)."""
    def make() -> _Stores:
        root = Path(settings(kernel).dir or Path(kernel.home) / "steer").expanduser()
        return _Stores(kernel.database, root)

    return kernel.state(_Stores, make)


@hookimpl
def register_settings(register):
    register("steer", SteerSettings)


@hookimpl
def register_migrations(register, kernel):
    from .migrations import VERSION_TABLE, VERSIONS

    register(VERSIONS, VERSION_TABLE)  # steering vectors: a table in the kernel's database


@hookimpl
def register_wire_formats(register, kernel):
    from .wire import SteerWire

    register(SteerWire())


def parse_strength(value: Any, limit: float, param: str = "steering_strength") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'{param}' must be a number from {-limit:g} to {limit:g}", param=param,
                             code="invalid_value")
    if not -limit <= value <= limit:
        raise InvalidRequest(f"'{param}' must lie from {-limit:g} to {limit:g} (got {value:g})", param=param,
                             code="invalid_value")
    return float(value)


@hookimpl(trylast=True)  # after adyton-guided, whose policies may carry steering fields
def prepare_request(request: GenerationRequest, principal: Principal, kernel: Kernel) -> Awaitable[None] | None:
    extra = request.extra
    if "steering_vector_id" not in extra and "steering_strength" not in extra:
        return None
    vector_id = extra.pop("steering_vector_id", None)
    strength = extra.pop("steering_strength", None)
    if vector_id is None:
        raise InvalidRequest("'steering_strength' needs a 'steering_vector_id'", param="steering_strength")
    if not isinstance(vector_id, str):
        raise InvalidRequest("'steering_vector_id' must be a string (sv_...)", param="steering_vector_id")
    strength = 1.0 if strength is None else parse_strength(strength, settings(kernel).max_strength)
    return _steer(request, principal, kernel, vector_id, strength)


async def _steer(request: GenerationRequest, principal: Principal, kernel: Kernel, vector_id: str,
                 strength: float) -> None:
    # a database read: off the event loop
    vector = await kernel.offload(stores(kernel).vectors.get, vector_id, principal, param="steering_vector_id")
    request.steering = Steering(model=vector.model, vectors=vector.vectors, strength=strength,
                                source="steering_vector_id")
