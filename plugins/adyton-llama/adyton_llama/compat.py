"""The rewrite that lets ctransformers load modern GGUF.

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
``ensure_compatible`` writes the rewritten copy once into a cache directory,
keyed by the source's sha256 (see ``cache.py``).

This module does not import the kernel.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cached_sha256, unlink_quiet
from .gguf import (
    GGML_TYPE_NAMES,
    GGUF_MAGIC,
    KV,
    GGUFError,
    GGUFFile,
    TensorInfo,
    ValueType,
    align,
    pack_kv,
    pack_tensor_info,
    read_gguf,
)

log = logging.getLogger(__name__)

#: bump when the rewrite changes, so stale cached copies are not reused
COMPAT_REVISION = 1
COMPAT_SOURCE_KEY = "adyton.compat.source_sha256"

#: tensor types the Sept-2023 ggml in ctransformers computes with (ids 16+ were
#: renumbered since: 16-18 meant I8/I16/I32 then, so they must be refused)
LEGACY_TENSOR_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14})
#: architectures the bundled llama.cpp can build a graph for
LEGACY_ARCHS = frozenset({"llama", "falcon"})


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
    parts.extend(pack_kv(kv) for kv in kvs)
    parts.extend(pack_tensor_info(t) for t in tensors)
    head = b"".join(parts)
    data_offset = align(len(head), g.alignment)
    return head + b"\0" * (data_offset - len(head)), data_offset


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
    digest = cached_sha256(source, cache)
    dest = cache / f"{digest}.compat{COMPAT_REVISION}.gguf"
    if dest.is_file():
        try:
            done = read_gguf(dest)
            if (done.get(COMPAT_SOURCE_KEY) == digest
                    and done.file_size - done.data_offset == g.file_size - g.data_offset):
                return str(dest)
        except GGUFError:
            pass
        log.warning("discarding invalid cached compat file %s", dest)
        unlink_quiet(dest)

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
        unlink_quiet(tmp)
        raise GGUFError(source, f"file changed while copying: {e}") from e
    except BaseException:
        unlink_quiet(tmp)
        raise
    return str(dest)
