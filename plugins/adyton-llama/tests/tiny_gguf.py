"""Tiny random-weight llama GGUF files for tests, written with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import quantize

from adyton_llama.tokenizer import gpt2_bytes_to_unicode

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_LAYER = 2
N_CTX = 256

GPT2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GPT2_MERGES = [
    "Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ w", "r e", "Ġ s",
    "h i", "Ġ hi", "l l", "e ll", "h ell", "hell o", "Ġ hello", "o r", "Ġw or", "Ġwor l", "Ġworl d",
]
SPM_PIECES = {
    # piece: score (higher merges first)
    "▁": -1.0, "e": -2.0, "t": -2.1, "h": -2.2, "l": -2.3, "o": -2.4, "a": -2.5,
    "b": -2.6, "c": -2.7, "w": -2.8, "r": -2.9, "d": -3.0, "s": -3.1, "n": -3.2,
    "i": -3.3, "é": -3.4,
    "he": -4.0, "▁t": -4.1, "▁the": -4.2, "ll": -4.3, "llo": -4.4, "▁he": -4.5,
    "▁hello": -4.6, "▁w": -4.7, "or": -4.8, "▁wor": -4.9, "▁world": -5.0,
    "ab": -5.1, "abc": -5.2, "bc": -5.0, "▁a": -5.3, "in": -5.4, "▁s": -5.5,
    "er": -5.6, "▁é": -5.7, "th": -6.0, "el": -6.1,
}


def gpt2_vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = list(GPT2_SPECIALS)
    types = [TokenType.CONTROL] * len(GPT2_SPECIALS)
    for ch in gpt2_bytes_to_unicode():
        tokens.append(ch)
        types.append(TokenType.NORMAL)
    for m in GPT2_MERGES:
        a, b = m.split(" ")
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types], list(GPT2_MERGES)


def spm_vocab(with_bytes: bool = True) -> tuple[list[str], list[int], list[float]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    if with_bytes:
        for b in range(256):
            tokens.append(f"<0x{b:02X}>")
            types.append(TokenType.BYTE)
            scores.append(0.0)
    for piece, score in SPM_PIECES.items():
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        scores.append(score)
    tokens.append("<|user|>")
    types.append(TokenType.USER_DEFINED)
    scores.append(0.0)
    return tokens, [int(t) for t in types], scores


def make_tiny_gguf(
    path: str | Path,
    family: str = "gpt2",
    *,
    tied: bool = True,
    seed: int = 0,
    spm_bytes: bool = True,
    chat_template: str | None = None,
) -> Path:
    """Write a 2-layer llama with random weights and a ``gpt2`` (byte-level BPE,
    pre=smollm) or ``llama`` (SentencePiece) tokenizer. GGUF v3, like modern files."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1)

    if family == "gpt2":
        tokens, types, merges = gpt2_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
    elif family == "llama":
        tokens, types, scores = spm_vocab(with_bytes=spm_bytes)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    else:
        raise ValueError(family)
    if chat_template:
        w.add_chat_template(chat_template)
    n_vocab = len(tokens)
    w.add_vocab_size(n_vocab)

    def f16(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.08).astype(np.float16)

    def norm() -> np.ndarray:
        return (1.0 + 0.05 * rng.standard_normal(N_EMBD)).astype(np.float32)

    emb = (rng.standard_normal((n_vocab, N_EMBD)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", quantize(emb, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.attn_q.weight", f16(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_k.weight", f16(kv, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_v.weight", f16(kv, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_output.weight", f16(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.ffn_gate.weight", f16(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", f16(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", f16(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", norm())
    if not tied:
        w.add_tensor("output.weight", f16(n_vocab, N_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
