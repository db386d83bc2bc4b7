from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from gguf import GGUFReader
from tiny_gguf import make_tiny_gguf

from adyton_llama import compat
from adyton_llama.cache import file_sha256
from adyton_llama.compat import COMPAT_SOURCE_KEY, ensure_compatible, needs_rewrite
from adyton_llama.gguf import GGUFError, read_gguf


def _write(w) -> None:
    """Write a gguf.GGUFWriter's file and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _data_sha(path: str) -> str:
    g = read_gguf(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(g.data_offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_smol_rewrite(model_path, compat_dir):
    src = read_gguf(model_path)
    assert src.version == 3
    assert set(needs_rewrite(src)) == {
        "GGUF version 3", "no tokenizer.ggml.scores", "tied embeddings (no output.weight)",
        "newline token not findable by the old tokenizer",
    }
    out = ensure_compatible(model_path, compat_dir)
    assert out != model_path and os.path.dirname(out) == str(compat_dir)
    g = read_gguf(out)
    assert g.version == 2 and needs_rewrite(g) == []
    assert g.get(COMPAT_SOURCE_KEY) == file_sha256(model_path)
    scores = g.get("tokenizer.ggml.scores")
    assert scores.dtype == np.float32 and len(scores) == 49152 and not scores.any()
    emb, outw = g.tensor("token_embd.weight"), g.tensor("output.weight")
    assert (outw.offset, outw.shape, outw.ggml_type) == (emb.offset, emb.shape, emb.ggml_type)
    tokens = g.get("tokenizer.ggml.tokens")
    assert tokens[198] == "\n" and "Ċ" not in tokens
    # everything else is preserved
    for key, _kv in src.kv.items():
        if key in ("tokenizer.ggml.tokens",):
            continue
        a, b = src.get(key), g.get(key)
        assert (a == b).all() if isinstance(a, np.ndarray) else a == b, key
    assert [(t.name, t.shape, t.ggml_type, t.offset) for t in g.tensors[:-1]] == [
        (t.name, t.shape, t.ggml_type, t.offset) for t in src.tensors
    ]
    assert g.data_offset % g.alignment == 0 and g.data_offset > src.data_offset
    assert g.file_size - g.data_offset == src.file_size - src.data_offset
    assert _data_sha(out) == _data_sha(model_path)


def test_cached_and_idempotent(tmp_path, monkeypatch):
    src = make_tiny_gguf(tmp_path / "m.gguf", "gpt2")
    cache = tmp_path / "cache"
    calls = []
    real = compat.build_compat_header
    monkeypatch.setattr(compat, "build_compat_header", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = ensure_compatible(src, cache)
    st = os.stat(first)
    second = ensure_compatible(src, cache)
    assert first == second and len(calls) == 1
    assert os.stat(second).st_mtime_ns == st.st_mtime_ns
    # the compat copy itself needs nothing: returned as is
    assert ensure_compatible(first, cache) == first
    assert len(calls) == 1
    # no temp files left behind
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp")) == []
    # keyed by content: a different source gets a different copy
    other = make_tiny_gguf(tmp_path / "o.gguf", "gpt2", seed=1)
    assert ensure_compatible(other, cache) != first


def test_changed_source_is_rewritten(tmp_path):
    path = tmp_path / "m.gguf"
    make_tiny_gguf(path, "gpt2", seed=1)
    a = ensure_compatible(path, tmp_path / "c")
    make_tiny_gguf(path, "gpt2", seed=2)  # same path and size, new content
    b = ensure_compatible(path, tmp_path / "c")
    assert a != b and _data_sha(b) == _data_sha(str(path))


def test_broken_cache_entry_is_replaced(tmp_path):
    src = make_tiny_gguf(tmp_path / "m.gguf", "llama")
    out = ensure_compatible(src, tmp_path / "c")
    with open(out, "r+b") as f:
        f.truncate(100)
    again = ensure_compatible(src, tmp_path / "c")
    assert again == out and read_gguf(again).version == 2


def test_tensor_bytes_and_custom_alignment(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "aligned.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "Ċ"])
    w.add_token_merges([])
    w.add_tensor("token_embd.weight", np.arange(3 * 32, dtype=np.float32).reshape(3, 32))
    w.add_tensor("other", np.ones(5, dtype=np.float32))
    _write(w)
    out = ensure_compatible(path, tmp_path / "c")
    g = read_gguf(out)
    assert g.alignment == 64 and g.data_offset % 64 == 0
    a, b = GGUFReader(str(path)), GGUFReader(out)
    ta = {t.name: np.array(t.data) for t in a.tensors}
    tb = {t.name: np.array(t.data) for t in b.tensors}
    assert set(tb) == set(ta) | {"output.weight"}
    for name, arr in ta.items():
        assert (tb[name] == arr).all()
    assert (tb["output.weight"] == ta["token_embd.weight"]).all()


def _cut_points(path) -> dict[str, int]:
    g = read_gguf(path)
    return {
        "magic": 3, "header": 12, "kv": 200, "tokens": 2000,
        "tensor_infos": g.metadata_end - 10, "data": g.data_offset + 100,
        "last_byte": g.file_size - 1,
    }


@pytest.mark.parametrize("where", ["magic", "header", "kv", "tokens", "tensor_infos", "data", "last_byte"])
def test_truncated_raises(tmp_path, where):
    src = make_tiny_gguf(tmp_path / "m.gguf", "gpt2", tied=False)
    cut = _cut_points(src)[where]
    bad = tmp_path / f"cut-{where}.gguf"
    bad.write_bytes(src.read_bytes()[:cut])
    with pytest.raises(GGUFError) as ei:
        ensure_compatible(bad, tmp_path / "c")
    assert str(bad) in str(ei.value) and ei.value.path == str(bad)
    assert not list((tmp_path / "c").glob("*.gguf")) if (tmp_path / "c").exists() else True


def test_truncated_real_model(model_path, tmp_path):
    bad = tmp_path / "smol-truncated.gguf"
    with open(model_path, "rb") as f:
        bad.write_bytes(f.read(5_000_000))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(bad)


def test_not_gguf_and_bad_headers(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"hello, this is not a model file at all" * 4)
    with pytest.raises(GGUFError, match="not a GGUF"):
        ensure_compatible(p, tmp_path / "c")
    p.write_bytes(b"GGUF" + struct.pack(">I", 3) + b"\0" * 32)
    with pytest.raises(GGUFError, match="big-endian"):
        read_gguf(p)
    p.write_bytes(b"GGUF" + struct.pack("<I", 9) + b"\0" * 32)
    with pytest.raises(GGUFError, match="version 9"):
        read_gguf(p)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(p)
    with pytest.raises(GGUFError, match="cannot open"):
        read_gguf(tmp_path / "missing.gguf")


def test_unsupported_arch_and_types(tmp_path):
    from gguf import GGUFWriter

    p = tmp_path / "qwen.gguf"
    w = GGUFWriter(str(p), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a"])
    w.add_tensor("t", np.ones(4, dtype=np.float32))
    _write(w)
    with pytest.raises(GGUFError, match="architecture 'qwen2'"):
        ensure_compatible(p, tmp_path / "c")

    p2 = tmp_path / "bf16.gguf"
    w = GGUFWriter(str(p2), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a"])
    w.add_tensor("t", np.ones(4, dtype=np.uint16), raw_dtype=gguf_bf16())
    _write(w)
    with pytest.raises(GGUFError, match="BF16"):
        ensure_compatible(p2, tmp_path / "c")


def gguf_bf16():
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType.BF16


def test_spm_without_byte_tokens_gets_newline_fix(tmp_path):
    src = make_tiny_gguf(tmp_path / "nobytes.gguf", "llama", spm_bytes=False)
    assert "newline token not findable by the old tokenizer" in needs_rewrite(read_gguf(src))
    out = read_gguf(ensure_compatible(src, tmp_path / "c"))
    assert out.get("tokenizer.ggml.tokens")[0] == "<0x0A>"  # the unk token was renamed
