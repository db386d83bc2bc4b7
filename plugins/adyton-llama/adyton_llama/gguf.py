"""Minimal GGUF reader and writer (v1-v3, little endian).

``read_gguf(path) -> GGUFFile`` parses the header, the metadata and the tensor
infos, checking every length against the file (a corrupt or truncated file is
a ``GGUFError`` naming it, never a crash); ``pack_kv`` / ``pack_tensor_info``
serialize them again (``compat.py`` writes rewritten headers with them).

This module does not import the kernel.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# sanity limits against corrupt headers (a count larger than the file is a lie)
_MAX_DIMS = 4


class GGUFError(Exception):
    """A GGUF file is unreadable, truncated or unsupported. ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FMT: dict[int, str] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}
_NP_DTYPE: dict[int, str] = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "<u1",
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}

# ggml tensor types: id -> (elements per block, bytes per block), current numbering
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144),
    13: (256, 176), 14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74),
    18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
    9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}


@dataclass
class KV:
    key: str
    type: int
    #: scalars: int/float/bool; STRING: bytes; ARRAY: see ``item_type``
    value: Any
    #: for ARRAY: element type; numeric arrays are numpy arrays, string arrays
    #: are lists of bytes, nested arrays are lists of (type, value) tuples
    item_type: int | None = None


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne[0] first)
    ggml_type: int
    offset: int  # relative to the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def n_bytes(self) -> int | None:
        sizes = GGML_TYPE_SIZES.get(self.ggml_type)
        if sizes is None:
            return None
        block, nbytes = sizes
        return self.n_elements // block * nbytes


@dataclass
class GGUFFile:
    path: str
    version: int
    kv: dict[str, KV]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int  # absolute file offset of the data section
    file_size: int
    metadata_end: int = 0  # end of the tensor infos (before padding)
    _tensor_index: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._tensor_index = {t.name: t for t in self.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        """Python value of a key: str for strings, list[str] for string arrays,
        numpy arrays for numeric arrays, plain scalars otherwise."""
        kv = self.kv.get(key)
        if kv is None:
            return default
        return _pythonize(kv)

    def tensor(self, name: str) -> TensorInfo | None:
        return self._tensor_index.get(name)

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture", ""))


def _pythonize(kv: KV) -> Any:
    if kv.type == ValueType.STRING:
        return kv.value.decode("utf-8", errors="replace")
    if kv.type == ValueType.ARRAY:
        if kv.item_type == ValueType.STRING:
            return [b.decode("utf-8", errors="replace") for b in kv.value]
        if kv.item_type == ValueType.BOOL:
            return kv.value.astype(bool)
        return kv.value
    return kv.value


# --------------------------------------------------------------------------- reading


class _Cursor:
    __slots__ = ("buf", "path", "pos", "size", "v1")

    def __init__(self, buf: Any, size: int, path: str):
        self.buf = buf
        self.pos = 0
        self.size = size
        self.path = path
        self.v1 = False

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                self.path,
                f"truncated or corrupt GGUF: {what} needs {n} bytes at offset "
                f"{self.pos}, file has {self.size}",
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def length(self, what: str) -> int:
        return self.scalar("I" if self.v1 else "Q", what)

    def string(self, what: str) -> bytes:
        n = self.length(what)
        self.need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b


def _read_value(c: _Cursor, vtype: int, key: str, depth: int = 0) -> tuple[Any, int | None]:
    if vtype in _SCALAR_FMT:
        return c.scalar(_SCALAR_FMT[vtype], f"value of {key!r}"), None
    if vtype == ValueType.STRING:
        return c.string(f"string value of {key!r}"), None
    if vtype == ValueType.ARRAY:
        if depth > 2:
            raise GGUFError(c.path, f"array nesting too deep in {key!r}")
        item_type = c.scalar("I", f"array type of {key!r}")
        n = c.length(f"array length of {key!r}")
        if item_type in _NP_DTYPE:
            itemsize = struct.calcsize("<" + _SCALAR_FMT[item_type])
            c.need(n * itemsize, f"array data of {key!r}")
            arr = np.frombuffer(c.buf, dtype=_NP_DTYPE[item_type], count=n, offset=c.pos).copy()
            c.pos += n * itemsize
            return arr, item_type
        if item_type == ValueType.STRING:
            if n > c.size - c.pos:  # every string needs >= 8 bytes; cheap sanity bound
                raise GGUFError(c.path, f"truncated or corrupt GGUF: array {key!r} claims {n} strings")
            buf, pos, size = c.buf, c.pos, c.size
            out: list[bytes] = []
            lfmt, lsize = ("<I", 4) if c.v1 else ("<Q", 8)
            unpack = struct.unpack_from
            for _ in range(n):
                if pos + lsize > size:
                    c.pos = pos
                    c.need(lsize, f"string in array {key!r}")
                (ln,) = unpack(lfmt, buf, pos)
                pos += lsize
                if pos + ln > size:
                    c.pos = pos
                    c.need(ln, f"string in array {key!r}")
                out.append(bytes(buf[pos : pos + ln]))
                pos += ln
            c.pos = pos
            return out, item_type
        if item_type == ValueType.ARRAY:
            if n > c.size - c.pos:
                raise GGUFError(c.path, f"truncated or corrupt GGUF: array {key!r} claims {n} items")
            items = []
            for _ in range(n):
                sub_type = ValueType.ARRAY
                v, it = _read_value(c, sub_type, key, depth + 1)
                items.append((it, v))
            return items, item_type
        raise GGUFError(c.path, f"unknown array element type {item_type} in {key!r}")
    raise GGUFError(c.path, f"unknown value type {vtype} in {key!r}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse the header, metadata and tensor infos of a GGUF file (v1-v3, little endian).

    Validates that every tensor's data lies inside the file. Raises ``GGUFError``.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - opened apart from the with: only open()'s own error is "cannot open"
    except OSError as e:
        raise GGUFError(path, f"cannot open: {e.strerror or e}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFError(path, f"not a GGUF file (only {size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, size, path)


def _parse(buf: Any, size: int, path: str) -> GGUFFile:
    c = _Cursor(buf, size, path)
    if bytes(buf[0:4]) != GGUF_MAGIC:
        raise GGUFError(path, f"not a GGUF file (magic {bytes(buf[0:4])!r})")
    c.pos = 4
    version = c.scalar("I", "version")
    if version not in (1, 2, 3):
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in (1, 2, 3):
            raise GGUFError(path, "big-endian GGUF is not supported")
        raise GGUFError(path, f"unsupported GGUF version {version}")
    c.v1 = version == 1
    n_tensors = c.length("tensor count")
    n_kv = c.length("metadata count")
    if n_tensors > size or n_kv > size:
        raise GGUFError(path, f"corrupt GGUF header (n_tensors={n_tensors}, n_kv={n_kv})")

    kvs: dict[str, KV] = {}
    for i in range(n_kv):
        key_b = c.string(f"key #{i}")
        key = key_b.decode("utf-8", errors="replace")
        vtype = c.scalar("I", f"type of {key!r}")
        value, item_type = _read_value(c, vtype, key)
        kvs[key] = KV(key, vtype, value, item_type)

    tensors: list[TensorInfo] = []
    for i in range(n_tensors):
        name = c.string(f"tensor name #{i}").decode("utf-8", errors="replace")
        n_dims = c.scalar("I", f"n_dims of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise GGUFError(path, f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(c.length(f"shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = c.scalar("I", f"type of tensor {name!r}")
        offset = c.scalar("Q", f"offset of tensor {name!r}")
        tensors.append(TensorInfo(name, shape, ggml_type, offset))

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kvs:
        a = kvs["general.alignment"].value
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1):
            raise GGUFError(path, f"invalid general.alignment {a!r}")
        alignment = a
    metadata_end = c.pos
    data_offset = align(metadata_end, alignment)
    if n_tensors and data_offset > size:
        raise GGUFError(path, "truncated GGUF: no data section")
    data_size = size - data_offset
    for t in tensors:
        nbytes = t.n_bytes()
        if t.offset % alignment:
            raise GGUFError(path, f"tensor {t.name!r} data is not aligned to {alignment}")
        if nbytes is None:
            continue  # unknown type: cannot check size (compat refuses it anyway)
        if t.offset + nbytes > data_size:
            raise GGUFError(
                path,
                f"truncated GGUF: tensor {t.name!r} needs bytes up to "
                f"{data_offset + t.offset + nbytes}, file has {size}",
            )
    return GGUFFile(path, version, kvs, tensors, alignment, data_offset, size, metadata_end)


def align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


# --------------------------------------------------------------------------- writing


def _pack_string(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: int, value: Any, item_type: int | None) -> bytes:
    if vtype in _SCALAR_FMT:
        return struct.pack("<" + _SCALAR_FMT[vtype], value)
    if vtype == ValueType.STRING:
        return _pack_string(value)
    if vtype == ValueType.ARRAY:
        assert item_type is not None
        head = struct.pack("<IQ", item_type, len(value))
        if item_type in _NP_DTYPE:
            return head + np.asarray(value, dtype=_NP_DTYPE[item_type]).tobytes()
        if item_type == ValueType.STRING:
            return head + b"".join(struct.pack("<Q", len(s)) + s for s in value)
        if item_type == ValueType.ARRAY:
            return head + b"".join(_pack_value(ValueType.ARRAY, v, it) for it, v in value)
    raise ValueError(f"cannot serialize GGUF value type {vtype}")


def pack_kv(kv: KV) -> bytes:
    return (
        _pack_string(kv.key.encode("utf-8"))
        + struct.pack("<I", kv.type)
        + _pack_value(kv.type, kv.value, kv.item_type)
    )


def pack_tensor_info(t: TensorInfo) -> bytes:
    return (
        _pack_string(t.name.encode("utf-8"))
        + struct.pack("<I", len(t.shape))
        + b"".join(struct.pack("<Q", d) for d in t.shape)
        + struct.pack("<IQ", t.ggml_type, t.offset)
    )


def iter_metadata(g: GGUFFile, skip_large: bool = True) -> Iterable[tuple[str, Any]]:
    """(key, python value) pairs; large arrays are summarized when ``skip_large``."""
    for key, kv in g.kv.items():
        if skip_large and kv.type == ValueType.ARRAY and len(kv.value) > 16:
            yield key, f"<array of {len(kv.value)}>"
        else:
            yield key, _pythonize(kv)
