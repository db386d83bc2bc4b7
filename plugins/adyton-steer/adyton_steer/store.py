"""The on-disk stores under ``[steer] dir`` (default ``$ADYTON_HOME/steer``).

* ``vectors/<id>.gguf`` — a steering vector in llama.cpp's control-vector
  format (what ``llama-cvector-generator`` and ``repeng`` write, and what
  ``llama-cli --control-vector`` reads): ``general.architecture =
  "controlvector"``, ``controlvector.model_hint`` (the model's
  architecture), ``controlvector.layer_count``, and one f32 tensor
  ``direction.<layer>`` of the hidden size per layer (layer numbers as
  llama.cpp counts them: ``direction.<il>`` is added to the output of layer
  ``il``, 0-based, and layer 0 has none).
* ``vectors/<id>.json`` — who owns it, which model it was made for, how.
* ``behaviors.json`` — the SAE features and probes ``/sae/generate`` reports.

Writes go to a temporary file renamed into place, so a crash never leaves a
half-written vector.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adyton import Forbidden, InvalidRequest, NotFound, Principal


@dataclass
class Vector:
    id: str
    owner: str
    model: str
    vectors: dict[int, np.ndarray]
    name: str | None = None
    method: str = "contrastive"
    shared: bool = False
    created: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        layers = sorted(self.vectors)
        return {
            "id": self.id,
            "object": "steering_vector",
            "name": self.name,
            "model": self.model,
            "layers": layers,
            "norms": {str(layer): round(float(np.linalg.norm(self.vectors[layer])), 6) for layer in layers},
            "dimensions": int(next(iter(self.vectors.values())).shape[0]) if self.vectors else 0,
            "method": self.method,
            "shared": self.shared,
            "created": self.created,
            **self.details,
        }

    def visible_to(self, principal: Principal) -> bool:
        return self.shared or self.owner == principal.id


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- llama.cpp's control-vector GGUF ----------------------------------------------------------


def write_control_vector(path: Path, vectors: dict[int, np.ndarray], model_hint: str) -> None:
    """Write ``vectors`` as llama.cpp's control-vector GGUF (as
    ``llama-cvector-generator`` does)."""
    import gguf

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(vectors))
        for layer in sorted(vectors):
            writer.add_tensor(f"direction.{layer}", np.asarray(vectors[layer], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _atomic_write(path, write)


def read_control_vector(path: Path, *, param: str = "file") -> tuple[dict[int, np.ndarray], str | None]:
    """The ``{layer: vector}`` of a control-vector GGUF, and its model hint.
    Raises ``InvalidRequest`` saying what is wrong with the file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
        raise InvalidRequest(f"not a GGUF file: {exc}", param=param) from None

    def text(key: str) -> str | None:
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        try:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        except Exception:  # noqa: BLE001
            return None

    arch = text("general.architecture")
    if arch != "controlvector":
        raise InvalidRequest(f"general.architecture is {arch!r}, not 'controlvector': this is not a "
                             "llama.cpp control vector", param=param)
    vectors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:  # refused as llama.cpp's common_control_vector_load_one refuses them
        name = tensor.name
        prefix, _, number = name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise InvalidRequest(f"tensor {name!r} is not direction.<layer>", param=param)
        if int(number) == 0:
            raise InvalidRequest("direction.0: layer 0 has no control vector in llama.cpp", param=param)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise InvalidRequest(f"tensor {name} is {tensor.tensor_type.name}; control vectors are F32",
                                 param=param)
        if len(tensor.shape) != 1:
            raise InvalidRequest(f"tensor {name} is not one-dimensional", param=param)
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(data)):
            raise InvalidRequest(f"tensor {name} holds a NaN or an infinity", param=param)
        vectors[int(number)] = data.copy()
    if not vectors:
        raise InvalidRequest("the file has no direction.<layer> tensors", param=param)
    sizes = {v.shape[0] for v in vectors.values()}
    if len(sizes) != 1:
        raise InvalidRequest(f"direction tensors of different sizes: {sorted(sizes)}", param=param)
    return vectors, text("controlvector.model_hint")


# -- the vector store ------------------------------------------------------------------------


class VectorStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "vectors"
        self._lock = threading.Lock()
        self._cache: dict[str, Vector] = {}

    def _paths(self, vector_id: str) -> tuple[Path, Path]:
        return self.dir / f"{vector_id}.gguf", self.dir / f"{vector_id}.json"

    def create(self, principal: Principal, model: str, vectors: dict[int, np.ndarray], *, model_hint: str,
               name: str | None, method: str, details: dict[str, Any]) -> Vector:
        vector = Vector(id="sv_" + secrets.token_hex(12), owner=principal.id, model=model,
                        vectors={k: np.asarray(v, np.float32) for k, v in vectors.items()}, name=name,
                        method=method, created=int(time.time()), details=details)
        gguf_path, meta_path = self._paths(vector.id)
        write_control_vector(gguf_path, vector.vectors, model_hint)
        self._write_meta(vector)
        with self._lock:
            self._cache[vector.id] = vector
        return vector

    def _write_meta(self, vector: Vector) -> None:
        meta = {"id": vector.id, "owner": vector.owner, "model": vector.model, "name": vector.name,
                "method": vector.method, "shared": vector.shared, "created": vector.created,
                "details": vector.details}
        _atomic_write(self._paths(vector.id)[1],
                      lambda tmp: tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8"))

    def _load(self, vector_id: str) -> Vector | None:
        if not vector_id.startswith("sv_") or not vector_id[3:].isalnum():
            return None
        with self._lock:
            cached = self._cache.get(vector_id)
        if cached is not None:
            return cached
        gguf_path, meta_path = self._paths(vector_id)
        if not (gguf_path.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        vectors, _ = read_control_vector(gguf_path)
        vector = Vector(id=vector_id, owner=meta["owner"], model=meta["model"], vectors=vectors,
                        name=meta.get("name"), method=meta.get("method", "upload"),
                        shared=bool(meta.get("shared")), created=int(meta.get("created", 0)),
                        details=meta.get("details") or {})
        with self._lock:
            self._cache[vector_id] = vector
        return vector

    def get(self, vector_id: str, principal: Principal, *, param: str = "id") -> Vector:
        """The vector, if ``principal`` may use it; 404 otherwise (another
        account's vector is not even said to exist)."""
        vector = self._load(vector_id) if isinstance(vector_id, str) else None
        if vector is None or not vector.visible_to(principal):
            raise NotFound(f"no steering vector {vector_id!r}", param=param, code="steering_vector_not_found")
        return vector

    def get_any(self, vector_id: str) -> Vector:
        vector = self._load(vector_id)
        if vector is None:
            raise NotFound(f"no steering vector {vector_id!r}", param="id", code="steering_vector_not_found")
        return vector

    def list(self, principal: Principal) -> list[Vector]:
        out = []
        if self.dir.is_dir():
            for meta in sorted(self.dir.glob("sv_*.json")):
                vector = self._load(meta.stem)
                if vector is not None and vector.visible_to(principal):
                    out.append(vector)
        return sorted(out, key=lambda v: (v.created, v.id))

    def delete(self, vector_id: str, principal: Principal) -> None:
        vector = self.get(vector_id, principal)
        if vector.owner != principal.id:
            raise Forbidden(f"steering vector {vector_id!r} is shared with you, not yours to delete",
                            code="insufficient_access")
        for path in self._paths(vector_id):
            path.unlink(missing_ok=True)
        with self._lock:
            self._cache.pop(vector_id, None)

    def set_shared(self, vector_id: str, shared: bool) -> Vector:
        vector = self.get_any(vector_id)
        vector.shared = shared
        self._write_meta(vector)
        return vector

    def gguf_path(self, vector: Vector) -> Path:
        return self._paths(vector.id)[0]
