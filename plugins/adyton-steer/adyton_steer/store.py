"""Steering vectors, in the kernel's database (table ``steer_vectors``: the
metadata and the GGUF bytes, so every server sharing the database serves the
same vectors), and the GGUF format.

* the GGUF — a steering vector in llama.cpp's control-vector
  format (what ``llama-cvector-generator`` and ``repeng`` write, and what
  ``llama-cli --control-vector`` reads): ``general.architecture =
  "controlvector"``, ``controlvector.model_hint`` (the model's
  architecture), ``controlvector.layer_count``, and one f32 tensor
  ``direction.<layer>`` of the hidden size per layer (layer numbers as
  llama.cpp counts them: ``direction.<il>`` is added to the output of layer
  ``il``, 0-based, and layer 0 has none).
* its row — who owns it, which model it was made for, how, whether shared.

Earlier releases kept ``vectors/<id>.gguf`` + ``vectors/<id>.json`` under
``[steer] dir``: the first start imports them, then renames the directory to
``vectors.imported``. (``behaviors.json`` — the SAE features and probes
``/sae/generate`` reports — stays a file: ``sae``.)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from adyton import Database, Forbidden, InvalidRequest, NotFound, Principal

from .migrations import VERSION_TABLE, VERSIONS

log = logging.getLogger("adyton.steer")


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


_vectors = sa.Table(
    "steer_vectors", sa.MetaData(),
    sa.Column("id", sa.String(80), primary_key=True), sa.Column("owner", sa.Text), sa.Column("model", sa.Text),
    sa.Column("name", sa.Text), sa.Column("method", sa.Text), sa.Column("shared", sa.Integer),
    sa.Column("created", sa.BigInteger), sa.Column("details", sa.Text), sa.Column("gguf", sa.LargeBinary))
_META = [c for c in _vectors.c if c.name != "gguf"]


def control_vector_bytes(vectors: dict[int, np.ndarray], model_hint: str) -> bytes:
    """``vectors`` as the bytes of llama.cpp's control-vector GGUF."""
    with tempfile.TemporaryDirectory(prefix="adyton-steer-") as tmp:
        path = Path(tmp) / "vector.gguf"
        write_control_vector(path, vectors, model_hint)
        return path.read_bytes()


def parse_control_vector(data: bytes, *, param: str = "file") -> tuple[dict[int, np.ndarray], str | None]:
    """``read_control_vector`` of GGUF bytes."""
    with tempfile.TemporaryDirectory(prefix="adyton-steer-") as tmp:
        path = Path(tmp) / "vector.gguf"
        path.write_bytes(data)
        return read_control_vector(path, param=param)


class VectorStore:
    """Steering vectors in ``db`` (the kernel's database). Rows are read on
    every use — a vector deleted or shared through one server is so on every
    server at once; only the decoded arrays are cached (a vector's content
    never changes). Calls block: run them off the event loop."""

    def __init__(self, db: Database, legacy_root: Path | None = None) -> None:
        self.db = db
        self.legacy_dir = legacy_root / "vectors" if legacy_root is not None else None
        self._lock = threading.Lock()
        self._opened = False
        self._arrays: dict[str, dict[int, np.ndarray]] = {}

    def open(self) -> VectorStore:
        with self._lock:
            if not self._opened:
                self.db.upgrade(VERSIONS, VERSION_TABLE)
                self._import_files()
                self._opened = True
        return self

    def _import_files(self) -> None:
        root = self.legacy_dir
        if root is None or not root.is_dir():
            return
        imported = 0
        with self.db.transaction() as conn:
            for meta_path in sorted(root.glob("sv_*.json")):
                gguf_path = meta_path.with_suffix(".gguf")
                try:
                    meta = json.loads(meta_path.read_text(encoding="utf-8"))
                    data = gguf_path.read_bytes()
                    parse_control_vector(data)  # refuse to import what could not be used
                except (OSError, ValueError, InvalidRequest) as exc:
                    log.warning("adyton-steer: skipping unreadable steering vector %s: %s", meta_path, exc)
                    continue
                if conn.execute(sa.select(_vectors.c.id).where(_vectors.c.id == meta_path.stem)).first():
                    continue
                conn.execute(_vectors.insert().values(
                    id=meta_path.stem, owner=str(meta["owner"]), model=str(meta["model"]), name=meta.get("name"),
                    method=meta.get("method", "upload"), shared=1 if meta.get("shared") else 0,
                    created=int(meta.get("created", 0)), details=json.dumps(meta.get("details") or {}), gguf=data))
                imported += 1
        target = root.with_name(root.name + ".imported")
        n = 0
        while target.exists():
            n += 1
            target = root.with_name(f"{root.name}.imported.{n}")
        os.replace(root, target)
        log.info("adyton-steer: imported %d steering vectors from %s (the files are kept in %s)",
                 imported, root, target)

    def create(self, principal: Principal, model: str, vectors: dict[int, np.ndarray], *, model_hint: str,
               name: str | None, method: str, details: dict[str, Any]) -> Vector:
        self.open()
        vector = Vector(id="sv_" + secrets.token_hex(12), owner=principal.id, model=model,
                        vectors={k: np.asarray(v, np.float32) for k, v in vectors.items()}, name=name,
                        method=method, created=int(time.time()), details=details)
        data = control_vector_bytes(vector.vectors, model_hint)
        with self.db.transaction() as conn:
            conn.execute(_vectors.insert().values(
                id=vector.id, owner=vector.owner, model=vector.model, name=vector.name, method=vector.method,
                shared=0, created=vector.created, details=json.dumps(vector.details), gguf=data))
        with self._lock:
            self._arrays[vector.id] = vector.vectors
        return vector

    def _vector(self, row: Any) -> Vector:
        with self._lock:
            arrays = self._arrays.get(row.id)
        if arrays is None:
            with self.db.connect() as conn:
                data = conn.execute(sa.select(_vectors.c.gguf).where(_vectors.c.id == row.id)).scalar_one()
            arrays, _ = parse_control_vector(bytes(data))
            with self._lock:
                self._arrays[row.id] = arrays
        return Vector(id=row.id, owner=row.owner, model=row.model, vectors=arrays, name=row.name,
                      method=row.method, shared=bool(row.shared), created=int(row.created),
                      details=json.loads(row.details or "{}"))

    def _load(self, vector_id: str) -> Vector | None:
        if not vector_id.startswith("sv_") or not vector_id[3:].isalnum():
            return None
        self.open()
        with self.db.connect() as conn:
            row = conn.execute(sa.select(*_META).where(_vectors.c.id == vector_id)).first()
        if row is None:
            with self._lock:
                self._arrays.pop(vector_id, None)
            return None
        return self._vector(row)

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

    def list_vectors(self, principal: Principal) -> list[Vector]:
        self.open()
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(*_META).where(sa.or_(_vectors.c.owner == principal.id,
                                                               _vectors.c.shared == 1))
                                .order_by(_vectors.c.created, _vectors.c.id)).all()
        return [self._vector(row) for row in rows]

    def delete(self, vector_id: str, principal: Principal) -> None:
        vector = self.get(vector_id, principal)
        if vector.owner != principal.id:
            raise Forbidden(f"steering vector {vector_id!r} is shared with you, not yours to delete",
                            code="insufficient_access")
        with self.db.transaction() as conn:
            conn.execute(_vectors.delete().where(_vectors.c.id == vector_id, _vectors.c.owner == principal.id))
        with self._lock:
            self._arrays.pop(vector_id, None)

    def set_shared(self, vector_id: str, shared: bool) -> Vector:
        with self.db.transaction() as conn:
            conn.execute(_vectors.update().where(_vectors.c.id == vector_id).values(shared=1 if shared else 0))
        return self.get_any(vector_id)

    def gguf_bytes(self, vector: Vector) -> bytes:
        """The vector's control-vector GGUF, byte for byte as stored."""
        with self.db.connect() as conn:
            data = conn.execute(sa.select(_vectors.c.gguf).where(_vectors.c.id == vector.id)).scalar()
        if data is None:
            raise NotFound(f"no steering vector {vector.id!r}", param="id", code="steering_vector_not_found")
        return bytes(data)
