"""Minimal GGUF reader/writer and the rewrite that lets ctransformers load modern GGUF.

ctransformers 0.2.27 bundles a llama.cpp from September 2023. Files written by a
recent ``convert_hf_to_gguf.py`` differ from what that loader expects:

(a) header version 3 -- the old reader knows 1 and 2; the little-endian layout
    of v2 and v3 is identical, so the version word is rewritten to 2;
(b) ``tokenizer.ggml.scores`` is mandatory for the old loader, BPE files no
    longer carry it -- a float32 array of zeros is added;
(c) tied embeddings: no ``output.weight`` tensor -- a tensor-info entry named
    ``output.weight`` that points at the data of ``token_embd.weight`` is added
    (same type, shape and offset; tensor bytes are never duplicated);
(d) the old C++ tokenizer looks ``"\\n"`` up at load time (``<0x0A>`` for SPM
    vocabularies) and crashes when it is absent; byte-level BPE vocabularies
    store it as ``"Ċ"`` -- that entry is renamed in the *copy*. We never use
    the C++ tokenizer (see ``tokenizer.py``, built from the *original* file).

Everything else (key order, values, tensor infos, tensor bytes) is preserved;
the data section is copied verbatim and re-aligned to ``general.alignment``.

This module does not import the kernel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: bump when the rewrite changes, so stale cached copies are not reused
COMPAT_REVISION = 1
COMPAT_SOURCE_KEY = "adyton.compat.source_sha256"

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
#: tensor types the Sept-2023 ggml in ctransformers computes with (ids 16+ were
#: renumbered since: 16-18 meant I8/I16/I32 then, so they must be refused)
LEGACY_TENSOR_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14})
#: architectures the bundled llama.cpp can build a graph for
LEGACY_ARCHS = frozenset({"llama", "falcon"})


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
    __slots__ = ("buf", "pos", "size", "path", "v1")

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
        f = open(path, "rb")
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
    data_offset = _align(metadata_end, alignment)
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


def _align(n: int, alignment: int) -> int:
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


def _pack_kv(kv: KV) -> bytes:
    return (
        _pack_string(kv.key.encode("utf-8"))
        + struct.pack("<I", kv.type)
        + _pack_value(kv.type, kv.value, kv.item_type)
    )


def _pack_tensor_info(t: TensorInfo) -> bytes:
    return (
        _pack_string(t.name.encode("utf-8"))
        + struct.pack("<I", len(t.shape))
        + b"".join(struct.pack("<Q", d) for d in t.shape)
        + struct.pack("<IQ", t.ggml_type, t.offset)
    )


# --------------------------------------------------------------------------- compat


def check_legacy_support(g: GGUFFile) -> None:
    """Raise GGUFError if the bundled (2023) llama.cpp cannot run this model at all."""
    arch = g.architecture
    if arch not in LEGACY_ARCHS:
        raise GGUFError(
            g.path,
            f"architecture {arch or '(none)'!r} is not supported by the ctransformers "
            f"backend (supported: {', '.join(sorted(LEGACY_ARCHS))})",
        )
    bad = sorted({t.ggml_type for t in g.tensors} - LEGACY_TENSOR_TYPES)
    if bad:
        names = ", ".join(GGML_TYPE_NAMES.get(b, str(b)) for b in bad)
        raise GGUFError(
            g.path,
            f"tensor type(s) {names} not supported by the ctransformers backend "
            "(use F32/F16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q2_K..Q6_K)",
        )
    model = g.get("tokenizer.ggml.model")
    if model not in ("llama", "gpt2"):
        raise GGUFError(g.path, f"tokenizer model {model!r} is not supported (llama, gpt2)")
    if "tokenizer.ggml.tokens" not in g.kv:
        raise GGUFError(g.path, "no tokenizer.ggml.tokens in the file")


def _newline_fix(g: GGUFFile) -> tuple[int, bytes] | None:
    """(token index, new text) making the old loader's newline lookup succeed, or None."""
    tokens: list[bytes] = g.kv["tokenizer.ggml.tokens"].value
    model = g.get("tokenizer.ggml.model")
    if model == "gpt2":
        want = b"\n"
        if want in tokens:
            return None
        byte_level_nl = "\u010a".encode()  # "Ċ": byte 0x0A in GPT-2's byte-to-unicode map
        idx = tokens.index(byte_level_nl) if byte_level_nl in tokens else None
    else:
        want = b"<0x0A>"
        if want in tokens:
            return None
        idx = None
    if idx is None:
        unk = g.get("tokenizer.ggml.unknown_token_id")
        idx = int(unk) if unk is not None and 0 <= int(unk) < len(tokens) else len(tokens) - 1
    return idx, want


def needs_rewrite(g: GGUFFile) -> list[str]:
    """Reasons why ``g`` must be rewritten for ctransformers (empty: load as is)."""
    reasons = []
    if g.version > 2:
        reasons.append(f"GGUF version {g.version}")
    if "tokenizer.ggml.scores" not in g.kv:
        reasons.append("no tokenizer.ggml.scores")
    if g.tensor("output.weight") is None and g.tensor("token_embd.weight") is not None:
        reasons.append("tied embeddings (no output.weight)")
    if "tokenizer.ggml.tokens" in g.kv and _newline_fix(g) is not None:
        reasons.append("newline token not findable by the old tokenizer")
    if any(kv.type == ValueType.ARRAY and kv.item_type == ValueType.ARRAY for kv in g.kv.values()):
        reasons.append("nested arrays (unsupported by the old reader)")
    return reasons


def build_compat_header(g: GGUFFile, source_sha256: str | None = None) -> tuple[bytes, int]:
    """Serialized header+metadata+tensor infos (v2) and the new data-section offset."""
    kvs: list[KV] = []
    for kv in g.kv.values():
        if kv.type == ValueType.ARRAY and kv.item_type == ValueType.ARRAY:
            log.info("compat: dropping nested-array key %s", kv.key)
            continue
        kvs.append(kv)
    kv_index = {kv.key: i for i, kv in enumerate(kvs)}

    n_vocab = len(g.kv["tokenizer.ggml.tokens"].value)
    if "tokenizer.ggml.scores" not in kv_index:
        kvs.append(KV("tokenizer.ggml.scores", ValueType.ARRAY,
                      np.zeros(n_vocab, dtype="<f4"), ValueType.FLOAT32))
    fix = _newline_fix(g)
    if fix is not None:
        idx, text = fix
        i = kv_index["tokenizer.ggml.tokens"]
        old = kvs[i]
        new_tokens = list(old.value)
        new_tokens[idx] = text
        kvs[i] = KV(old.key, old.type, new_tokens, old.item_type)
    if source_sha256:
        kv = KV(COMPAT_SOURCE_KEY, ValueType.STRING, source_sha256.encode(), None)
        if COMPAT_SOURCE_KEY in kv_index:
            kvs[kv_index[COMPAT_SOURCE_KEY]] = kv
        else:
            kvs.append(kv)

    tensors = list(g.tensors)
    emb = g.tensor("token_embd.weight")
    if g.tensor("output.weight") is None and emb is not None:
        tensors.append(TensorInfo("output.weight", emb.shape, emb.ggml_type, emb.offset))

    parts = [GGUF_MAGIC, struct.pack("<IQQ", 2, len(tensors), len(kvs))]
    parts.extend(_pack_kv(kv) for kv in kvs)
    parts.extend(_pack_tensor_info(t) for t in tensors)
    head = b"".join(parts)
    data_offset = _align(len(head), g.alignment)
    return head + b"\0" * (data_offset - len(head)), data_offset


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _cached_sha256(path: str, cache_dir: Path) -> str:
    """sha256 of ``path``, memoized by (device, inode, size, mtime, ctime)."""
    st = os.stat(path)
    stamp = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo_path = cache_dir / "sha256-memo.json"
    memo: dict[str, Any] = {}
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        pass
    key = os.path.realpath(path)
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    memo[key] = {"stamp": stamp, "sha256": digest}
    try:
        _atomic_write_bytes(memo_path, json.dumps(memo, indent=1).encode())
    except OSError as e:  # the memo is an optimization only
        log.debug("could not write %s: %s", memo_path, e)
    return digest


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(p: str | os.PathLike[str]) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _copy_range(src: Any, dst: Any, offset: int, count: int) -> None:
    src.seek(offset)
    remaining = count
    while remaining > 0:
        b = src.read(min(remaining, 8 << 20))
        if not b:
            raise EOFError("source shrank while copying")
        dst.write(b)
        remaining -= len(b)


def ensure_compatible(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
) -> str:
    """Path of a GGUF that ctransformers 0.2.27 can load, equivalent to ``source``.

    Returns ``source`` itself when no rewrite is needed. Otherwise writes (once)
    ``cache_dir/<sha256 of source>.compat<rev>.gguf`` atomically and returns it.
    Raises ``GGUFError`` for unreadable, truncated or unsupported files.
    """
    source = os.fspath(source)
    g = read_gguf(source)
    check_legacy_support(g)
    reasons = needs_rewrite(g)
    if not reasons:
        return source

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    digest = _cached_sha256(source, cache)
    dest = cache / f"{digest}.compat{COMPAT_REVISION}.gguf"
    if dest.is_file():
        try:
            done = read_gguf(dest)
            if done.get(COMPAT_SOURCE_KEY) == digest and done.file_size - done.data_offset == g.file_size - g.data_offset:
                return str(dest)
        except GGUFError:
            pass
        log.warning("discarding invalid cached compat file %s", dest)
        _unlink_quiet(dest)

    log.info("rewriting %s for ctransformers (%s)", source, "; ".join(reasons))
    head, _ = build_compat_header(g, digest)
    data_len = g.file_size - g.data_offset
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            out.write(head)
            _copy_range(src, out, g.data_offset, data_len)
            out.flush()
            os.fsync(out.fileno())
        # verify before publishing: the copy must parse and keep the tensor bytes' extent
        check = read_gguf(tmp)
        if check.file_size - check.data_offset != data_len or check.version != 2:
            raise GGUFError(tmp, "internal error: compat copy failed verification")
        os.replace(tmp, dest)
    except EOFError as e:
        _unlink_quiet(tmp)
        raise GGUFError(source, f"file changed while copying: {e}") from e
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return str(dest)


def iter_metadata(g: GGUFFile, skip_large: bool = True) -> Iterable[tuple[str, Any]]:
    """(key, python value) pairs; large arrays are summarized when ``skip_large``."""
    for key, kv in g.kv.items():
        if skip_large and kv.type == ValueType.ARRAY and len(kv.value) > 16:
            yield key, f"<array of {len(kv.value)}>"
        else:
            yield key, _pythonize(kv)
