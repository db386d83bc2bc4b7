from __future__ import annotations

import heapq

import pytest
from llama_reference import load_reference

from adyton_llama.tokenizer import GGUFTokenizer, IncrementalDetokenizer, TokenizerError, gpt2_bytes_to_unicode

_ENTRIES = (load_reference() or {}).get("tokenize", [])


@pytest.mark.parametrize("idx", range(len(_ENTRIES)) or [pytest.param(0, marks=pytest.mark.skip("no reference"))])
def test_matches_llama_cpp(smol_tokenizer, idx):
    entry = _ENTRIES[idx]
    assert smol_tokenizer.encode(entry["text"]) == entry["ids"]


def test_reference_is_complete(reference):
    assert len(reference["tokenize"]) == len(_ENTRIES) == 152


def test_roundtrip_and_prompts(smol_tokenizer, reference):
    tok = smol_tokenizer
    for e in reference["tokenize"]:
        assert tok.decode(e["ids"], skip_special=False) == e["text"]
    for chat in reference["chat_greedy"]:
        assert tok.encode(chat["prompt"]) == chat["prompt_ids"]
        assert tok.decode(chat["greedy_ids"]) == chat["greedy_text"]


def test_special_tokens(smol_tokenizer):
    tok = smol_tokenizer
    assert tok.bos_id == 1 and tok.eos_id == 2
    assert {0, 2} <= tok.eos_ids  # <|endoftext|>, <|im_end|>
    assert tok.add_bos_token is False
    assert 1 in tok.control_token_ids and 2 in tok.control_token_ids
    assert tok.encode("<|im_start|>") == [1]
    plain = tok.encode("<|im_start|>", parse_special=False)
    assert 1 not in plain and tok.decode(plain) == "<|im_start|>"
    assert tok.decode([1, 19556, 2]) == "Hello"
    assert tok.decode([1, 19556, 2], skip_special=False) == "<|im_start|>Hello<|im_end|>"
    assert tok.encode("Hello", add_bos=True) == [1, 19556]


def test_token_bytes(smol_tokenizer):
    tb = smol_tokenizer.token_bytes()
    assert len(tb) == smol_tokenizer.vocab_size == 49152
    assert tb[198] == b"\n" and tb[216] == b" " and tb[1] == b"<|im_start|>"
    # byte-level tokens that are partial UTF-8 sequences stay raw bytes
    ids = smol_tokenizer.encode("😀")
    assert b"".join(tb[i] for i in ids) == "😀".encode()
    assert any(len(tb[i]) and not _valid_utf8(tb[i]) for i in ids)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize(
    "text",
    ["emoji 😀🎉👍🏽 done", "日本語のテキスト", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and Ünïcödé", "mixed 你好, мир! 🙂🙂"],
)
def test_incremental_detokenizer(smol_tokenizer, text):
    ids = smol_tokenizer.encode(text)
    det = smol_tokenizer.detokenizer()
    pieces = [det.push(i) for i in ids]
    assert "".join(pieces) + det.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    # something was held back at least once (a character split across tokens)
    held = [p for p, i in zip(pieces, ids, strict=True) if p == "" and smol_tokenizer.token_bytes()[i]]
    assert held, "expected at least one token that completes no character"
    assert det.text == text


def test_incremental_detokenizer_skips_control_and_flushes_garbage(smol_tokenizer):
    tok = smol_tokenizer
    det = IncrementalDetokenizer(tok)
    out = det.push(1) + det.push_many(tok.encode("hi")) + det.push(2)
    assert out == "hi"
    det2 = tok.detokenizer(skip_special=False)
    assert det2.push(1) == "<|im_start|>"
    # a lone lead byte of a 4-byte sequence is held, then flushed as U+FFFD
    lead = next(i for i, b in enumerate(tok.token_bytes()) if b == b"\xf0")
    det3 = tok.detokenizer()
    assert det3.push(lead) == ""
    assert det3.pending_bytes == b"\xf0"
    assert det3.flush() == "\ufffd"
    # an invalid continuation is replaced, never raises
    assert det3.push(lead) == "" and det3.push(tok.encode("a")[0]) == "\ufffda"


# --------------------------------------------------------------------------- SPM (llama)


def _llama_cpp_spm(tok: GGUFTokenizer, text: str) -> list[int]:
    """Reference port of llama.cpp's llm_tokenizer_spm for one raw fragment."""
    vocab = {tok.id_to_piece(i): i for i in range(tok.vocab_size)}
    scores = tok._scores
    text = (" " + text if tok.add_space_prefix else text).replace(" ", "\u2581")
    syms = [[c, i - 1, i + 1 if i + 1 < len(text) else -1] for i, c in enumerate(text)]
    heap: list[tuple[float, int, int, str]] = []

    def add(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        t = syms[left][0] + syms[right][0]
        tid = vocab.get(t)
        if tid is None:
            return
        heapq.heappush(heap, (-scores[tid], left, right, t))

    for i in range(1, len(syms)):
        add(i - 1, i)
    while heap:
        _, left, right, t = heapq.heappop(heap)
        ls, rs = syms[left], syms[right]
        if not ls[0] or not rs[0] or ls[0] + rs[0] != t:
            continue
        ls[0] = t
        rs[0] = ""
        ls[2] = rs[2]
        if rs[2] >= 0:
            syms[rs[2]][1] = left
        add(ls[1], left)
        add(left, ls[2])
    out = []
    for s, _, _ in syms:
        if not s:
            continue
        if s in vocab:
            out.append(vocab[s])
        else:
            out.extend(vocab[f"<0x{b:02X}>"] for b in s.encode())
    return out


SPM_TEXTS = [
    "hello world", "the abc", "abcabc", "  spaces  here ", "é", "éé the", "日本",
    "hello\nworld\t!", "a<s>b</s>", "<|user|>hi", "x", "hellohello wor", "ab bc abc cab",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_spm_matches_llama_cpp_algorithm(tiny_llama, text):
    tok = GGUFTokenizer.from_gguf(tiny_llama)
    expected: list[int] = []
    for frag in tok._partition(text, True):
        if isinstance(frag, int):
            expected.append(frag)
        else:
            expected.extend(_llama_cpp_spm(tok, frag))
    assert tok.encode(text) == expected
    if "<" not in text:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode(text, add_bos=True)) == text


def test_spm_properties(tiny_llama):
    tok = GGUFTokenizer.from_gguf(tiny_llama)
    assert tok.model == "llama" and tok.add_bos_token and tok.add_space_prefix
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.eos_ids == {2}
    assert tok.encode("hello", add_bos=True)[0] == 1
    tb = tok.token_bytes()
    assert tb[tok.piece_to_id("<0x0A>")] == b"\n"
    assert tb[tok.piece_to_id("▁hello")] == b" hello"
    assert tok.control_token_ids == {0, 1, 2}
    # user-defined tokens are split even without parse_special; control ones are not
    uid = tok.piece_to_id("<|user|>")
    assert uid in tok.encode("<|user|>", parse_special=False)
    assert 1 not in tok.encode("<s>", parse_special=False)
    # byte fallback pieces reassemble incrementally
    det = tok.detokenizer()
    assert "".join(det.push(i) for i in tok.encode("日本 é")) + det.flush() == " 日本 é"
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_gpt2_bytes_to_unicode():
    """Pinned here because the tiny test vocabularies are written with it."""
    from tokenizers.pre_tokenizers import ByteLevel

    table = gpt2_bytes_to_unicode()
    assert len(table) == len(set(table)) == 256 and set(table) == set(ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā" and table[0xAD] == "Ń"
    assert table[ord("a")] == "a" and table[0xC3] == "Ã" and table[0xFF] == "ÿ"


def test_gpt2_tiny(tiny_gpt2):
    tok = GGUFTokenizer.from_gguf(tiny_gpt2)
    assert tok.pre == "smollm"
    ids = tok.encode("hello world 123\n<|im_end|>")
    assert tok.decode(ids, skip_special=False) == "hello world 123\n<|im_end|>"
    assert ids[-1] == 2 and tok.piece_to_id("Ġworld") in ids
    assert tok.encode("12") == [tok.piece_to_id("1"), tok.piece_to_id("2")]


def test_unknown_pre_tokenizer_falls_back(tmp_path, caplog):
    from tiny_gguf import make_tiny_gguf

    from adyton_llama.gguf import KV, ValueType, read_gguf

    meta = read_gguf(make_tiny_gguf(tmp_path / "t.gguf", "gpt2"))
    meta.kv["tokenizer.ggml.pre"] = KV("tokenizer.ggml.pre", ValueType.STRING, b"no-such-pre")
    with caplog.at_level("WARNING"):
        tok = GGUFTokenizer(meta)
    assert "not supported" in caplog.text
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_unsupported_model(tmp_path):
    from tiny_gguf import make_tiny_gguf

    from adyton_llama.gguf import KV, ValueType, read_gguf

    meta = read_gguf(make_tiny_gguf(tmp_path / "t.gguf", "gpt2"))
    meta.kv["tokenizer.ggml.model"] = KV("tokenizer.ggml.model", ValueType.STRING, b"bert")
    with pytest.raises(TokenizerError, match="bert"):
        GGUFTokenizer(meta)
