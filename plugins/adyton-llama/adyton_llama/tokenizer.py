"""Tokenization and detokenization from a GGUF's own vocabulary, in Python.

Mirrors llama.cpp (``llama-vocab.cpp``): special tokens are split out first
(longest text first, exactly like ``tokenizer_st_partition``), then every raw
text fragment goes through the model's tokenizer:

* ``tokenizer.ggml.model = gpt2``: byte-level BPE with the pre-tokenizer regexes
  that ``tokenizer.ggml.pre`` names (HF ``tokenizers`` does the work);
* ``tokenizer.ggml.model = llama``: SentencePiece-style BPE over scores
  (``▁`` for spaces, optional leading space, ``<0xNN>`` byte fallback).

Always build it from the ORIGINAL GGUF, not the ctransformers compat copy (the
copy renames the newline token).

This module does not import the kernel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from .gguf import GGUFFile, read_gguf

log = logging.getLogger(__name__)

# llama.cpp token types (tokenizer.ggml.token_type)
TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Texts llama.cpp treats as end-of-generation (and forces to control type).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_RES = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]")

#: tokenizer.ggml.pre -> (regexes applied in sequence, ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": (_DEFAULT_RES, False),
    **dict.fromkeys((
        "gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de",
        "jina-v2-es", "jina-v2-de", "jina-v1-en", "jina-v2-code", "roberta-bpe",
        "gigachat", "exaone4", "trillion", "mellum", "a.x-4.0",
    ), ((_GPT2_RE,), False)),
    **dict.fromkeys((
        "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
    ), ((r"\p{N}", _GPT2_RE), False)),
    **dict.fromkeys((
        "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe",
    ), ((_LLAMA3_RE,), True)),
    **dict.fromkeys((
        "qwen2", "stablelm2", "deepseek-r1-qwen", "megrez",
    ), ((_QWEN2_RE,), False)),
    "chatglm-bpe": ((_LLAMA3_RE,), False),
    "glm4": ((_LLAMA3_RE,), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]"), False),
    "poro-chat": ((r" ?[^(\s|.,!?…。，、।۔،)]+",), False),
    "bloom": ((r" ?[^(\s|.,!?…。，、।۔،)]+",), False),
    "gpt3-finnish": ((r" ?[^(\s|.,!?…。，、।۔،)]+",), False),
    "viking": ((r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"), False),
}


class TokenizerError(Exception):
    """The GGUF's tokenizer cannot be built (unsupported or malformed)."""


class TooManyTokens(Exception):
    """``encode(..., limit=)``: the text is ``count`` tokens (at least), more than the limit."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} tokens")
        self.count = count


@lru_cache(maxsize=1)
def gpt2_bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's byte-level alphabet, the one every byte-level BPE vocabulary
    (``tokenizer.ggml.model = gpt2``) is written in: index = byte value, item =
    the printable character that stands for it (``Ġ`` for a space, ``Ċ`` for a
    newline; printable ASCII and most of Latin-1 stand for themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return tuple(chr(table[b]) for b in range(256))


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of ``gpt2_bytes_to_unicode``: character -> byte value."""
    return {ch: b for b, ch in enumerate(gpt2_bytes_to_unicode())}


def _byte_level_to_bytes(text: str) -> bytes:
    dec = _byte_decoder()
    out = bytearray()
    for ch in text:
        b = dec.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def _parse_byte_token(text: str) -> int | None:
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return int(text[3:5], 16)
        except ValueError:
            return None
    return None


#: fragments this long are encoded without holding the GIL
_GIL_FREE_CHARS = 16_384


class GGUFTokenizer:
    """Tokenizer built from a GGUF's metadata (``tokenizer.ggml.*``)."""

    def __init__(self, meta: GGUFFile):
        self.path = meta.path
        model = meta.get("tokenizer.ggml.model")
        if model not in ("gpt2", "llama"):
            raise TokenizerError(f"{meta.path}: unsupported tokenizer model {model!r}")
        self.model: str = model
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError(f"{meta.path}: no tokenizer.ggml.tokens")
        # llama.cpp renames empty tokens so they cannot match anything
        self._tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(self._tokens)
        types = meta.get("tokenizer.ggml.token_type")
        self._types: list[int] = ([int(t) for t in types] if types is not None and len(types) == n
                                  else [TOKEN_NORMAL] * n)
        scores = meta.get("tokenizer.ggml.scores")
        self._scores: list[float] = [float(s) for s in scores] if scores is not None and len(scores) == n else [0.0] * n

        self._text_to_id: dict[str, int] = {}
        for i, t in enumerate(self._tokens):
            self._text_to_id[t] = i  # last one wins, as in llama.cpp

        def _id(key: str) -> int | None:
            v = meta.get(key)
            if v is None:
                return None
            v = int(v)
            return v if 0 <= v < n else None

        spm = model == "llama"
        self.bos_id: int | None = _id("tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = _id("tokenizer.ggml.eos_token_id")
        if spm:
            if "tokenizer.ggml.bos_token_id" not in meta.kv and n > 1:
                self.bos_id = 1
            if "tokenizer.ggml.eos_token_id" not in meta.kv and n > 2:
                self.eos_id = 2
        self.unk_id: int | None = _id("tokenizer.ggml.unknown_token_id")
        if self.unk_id is None and spm and "tokenizer.ggml.unknown_token_id" not in meta.kv:
            self.unk_id = 0
        self.pad_id: int | None = _id("tokenizer.ggml.padding_token_id")
        self.eot_id: int | None = _id("tokenizer.ggml.eot_token_id")
        self.eom_id: int | None = _id("tokenizer.ggml.eom_token_id")

        # end-of-generation ids (llama.cpp's special_eog_ids, minus FIM tokens)
        eog = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        for text in EOG_TEXTS:
            found = self._text_to_id.get(text)
            if found is not None:
                eog.add(found)
                if self._types[found] not in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
                    self._types[found] = TOKEN_CONTROL  # llama.cpp overrides these too
        self.eos_ids: frozenset[int] = frozenset(eog)

        self.add_space_prefix: bool = bool(meta.get("tokenizer.ggml.add_space_prefix", spm))
        pre = meta.get("tokenizer.ggml.pre")
        self.pre: str | None = str(pre) if pre is not None else None
        default_add_bos = spm or (self.pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"))
        self.add_bos_token: bool = bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos))

        #: ids of control/unknown tokens ("special": skipped when decoding text)
        self.control_token_ids: frozenset[int] = frozenset(
            i for i, t in enumerate(self._types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)
        )
        # tokens split out of raw text before tokenization, longest text first
        splittable = [i for i, t in enumerate(self._types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)]
        splittable.sort(key=lambda i: -len(self._tokens[i].encode("utf-8")))
        self._special_split: list[tuple[int, str, bool]] = [
            (i, self._tokens[i], self._types[i] != TOKEN_USER_DEFINED) for i in splittable
        ]

        #: the texts of the control tokens (what chat-template markup spells)
        self.control_texts: tuple[str, ...] = tuple(t for _, t, control in self._special_split if control)

        self._token_bytes: list[bytes] = self._build_token_bytes()
        #: no token covers more bytes than this (so a text of N characters is
        #: at least N / max_token_bytes tokens)
        self.max_token_bytes = max(1, max((len(b) for b in self._token_bytes), default=1))
        self._hf: Tokenizer = self._build_spm() if spm else self._build_bpe(meta)

    # ------------------------------------------------------------------ build

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> GGUFTokenizer:
        return cls(read_gguf(path))

    def _build_token_bytes(self) -> list[bytes]:
        out: list[bytes] = []
        spm = self.model == "llama"
        for text, ttype in zip(self._tokens, self._types, strict=True):
            if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
                out.append(text.encode("utf-8"))
            elif ttype == TOKEN_BYTE and spm:
                b = _parse_byte_token(text)
                out.append(bytes([b]) if b is not None else b"")
            elif ttype in (TOKEN_NORMAL, TOKEN_UNDEFINED) or (ttype == TOKEN_BYTE and not spm):
                if spm:
                    out.append(text.replace("\u2581", " ").encode("utf-8"))
                else:
                    out.append(_byte_level_to_bytes(text))
            else:  # unused
                out.append(b"")
        return out

    def _hf_vocab(self) -> dict[str, int]:
        return dict(self._text_to_id)

    def _build_bpe(self, meta: GGUFFile) -> Tokenizer:
        merges_raw = meta.get("tokenizer.ggml.merges")
        if merges_raw is None:
            raise TokenizerError(f"{meta.path}: gpt2 tokenizer without tokenizer.ggml.merges")
        vocab = self._hf_vocab()
        merges: list[tuple[str, str]] = []
        dropped = 0
        for m in merges_raw:
            pos = m.find(" ", 1)
            if pos < 0:
                dropped += 1
                continue
            a, b = m[:pos], m[pos + 1 :]
            if a in vocab and b in vocab and (a + b) in vocab:
                merges.append((a, b))
            else:
                dropped += 1
        if dropped:
            log.warning("%s: ignored %d merges not covered by the vocabulary", meta.path, dropped)
        pre = self.pre
        if pre is None or pre not in PRE_TOKENIZERS:
            log.warning(
                "%s: pre-tokenizer %r not supported; using llama.cpp's 'default' regexes",
                meta.path, pre,
            )
            pre = "default"
        regexes, ignore_merges = PRE_TOKENIZERS[pre]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        return tok

    def _build_spm(self) -> Tokenizer:
        vocab = self._hf_vocab()
        # SentencePiece BPE: any two pieces whose concatenation is a piece may merge,
        # the higher the score of the result the earlier (llama.cpp's llm_tokenizer_spm)
        ranked: list[tuple[float, int, int, str, str]] = []
        for i, (text, ttype) in enumerate(zip(self._tokens, self._types, strict=True)):
            if ttype in (TOKEN_BYTE, TOKEN_UNUSED) or len(text) < 2 or self._text_to_id.get(text) != i:
                continue
            for k in range(1, len(text)):
                a, b = text[:k], text[k:]
                ia = vocab.get(a)
                if ia is None or b not in vocab:
                    continue
                ranked.append((-self._scores[i], i, ia, a, b))
        ranked.sort()
        merges = [(a, b) for _, _, _, a, b in ranked]
        unk = self._tokens[self.unk_id] if self.unk_id is not None else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
        if self.add_space_prefix:
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(steps)
        return tok

    # ------------------------------------------------------------------ API

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def id_to_piece(self, token_id: int) -> str:
        """The raw vocabulary text of a token (e.g. ``Ġhello``, ``▁hello``)."""
        return self._tokens[token_id]

    def piece_to_id(self, piece: str) -> int | None:
        return self._text_to_id.get(piece)

    def token_type(self, token_id: int) -> int:
        return self._types[token_id]

    def is_eos(self, token_id: int) -> bool:
        return token_id in self.eos_ids

    def token_bytes(self) -> list[bytes]:
        """Raw bytes each token stands for (control tokens: their literal text;
        see ``control_token_ids``). Index = token id. Do not mutate."""
        return self._token_bytes

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        frags: list[str | int] = [text]
        for tid, ttext, is_control in self._special_split:
            if is_control and not parse_special:
                continue
            if ttext not in text:
                continue
            new: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int) or ttext not in frag:
                    new.append(frag)
                    continue
                parts = frag.split(ttext)
                for j, part in enumerate(parts):
                    if j:
                        new.append(tid)
                    if part:
                        new.append(part)
            frags = new
        return frags

    def encode(self, text: str, parse_special: bool = True, add_bos: bool = False,
               limit: int | None = None) -> list[int]:
        """Token ids of ``text``. ``parse_special``: control tokens written in the
        text (``<|im_start|>``) become single tokens. ``add_bos``: prepend BOS.
        ``limit``: raise ``TooManyTokens`` (with the count so far) instead of
        returning more ids than this, so a prompt far over the context is not
        turned into a list of a million ids (which holds the GIL)."""
        ids: list[int] = []
        if add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        if not text:
            return ids
        if limit is not None and len(text) > limit * self.max_token_bytes:
            # certainly over the limit: say so without tokenizing megabytes
            raise TooManyTokens(len(ids) + -(-len(text) // self.max_token_bytes))
        hf = self._hf
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                ids.append(frag)
            elif len(frag) < _GIL_FREE_CHARS:
                ids.extend(hf.encode(frag, add_special_tokens=False).ids)
            else:
                # encode_batch lets go of the GIL while it works (encode does
                # not): the server keeps answering while a huge prompt is
                # tokenized on a worker thread
                encoding = hf.encode_batch([frag], add_special_tokens=False)[0]
                if limit is not None and len(ids) + len(encoding) > limit:
                    raise TooManyTokens(len(ids) + len(encoding))
                ids.extend(encoding.ids)
        if limit is not None and len(ids) > limit:
            raise TooManyTokens(len(ids))
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        tb = self._token_bytes
        ctrl = self.control_token_ids if skip_special else frozenset()
        n = len(tb)
        return b"".join(tb[i] for i in ids if 0 <= i < n and i not in ctrl)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (invalid UTF-8 -> U+FFFD). Control tokens are dropped
        unless ``skip_special=False``. SPM vocabularies with ``add_space_prefix``
        drop the one leading space encoding adds (a leading BOS is skipped for
        that check), so ``decode(encode(t)) == t``."""
        ids = list(ids)
        data = self.decode_bytes(ids, skip_special)
        if self.model == "llama" and self.add_space_prefix:
            lead = self.decode_bytes(ids[:1], skip_special=True) if ids else b""
            if ids and not lead and ids[0] == self.bos_id:
                data = self.decode_bytes(ids[:1], skip_special) + self._strip1(self.decode_bytes(ids[1:], skip_special))
            else:
                data = self._strip1(data)
        return data.decode("utf-8", errors="replace")

    @staticmethod
    def _strip1(data: bytes) -> bytes:
        return data[1:] if data.startswith(b" ") else data

    def detokenizer(self, skip_special: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special=skip_special)


def _complete_utf8_prefix(buf: bytes | bytearray) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside an
    incomplete (but so far valid-looking) UTF-8 sequence."""
    n = len(buf)
    # look back at most 3 bytes for the start of a multi-byte sequence
    i = n - 1
    limit = max(0, n - 4)
    while i >= limit:
        b = buf[i]
        if b < 0x80:
            return n  # ASCII: everything complete
        if b >= 0xC0:  # lead byte
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 1
            return i if n - i < need else n
        i -= 1  # continuation byte
    return n  # only continuation bytes: invalid anyway, let the decoder replace them


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only complete UTF-8 text.

    Bytes of a character split across tokens (emoji, CJK, byte-fallback tokens)
    are held back until the character is complete. Invalid sequences become
    U+FFFD. Call ``flush()`` at the end to release anything held back.
    No leading-space stripping is done (the stream continues a prompt).
    """

    def __init__(self, tokenizer: GGUFTokenizer, skip_special: bool = True):
        self._tb = tokenizer.token_bytes()
        self._skip = tokenizer.control_token_ids if skip_special else frozenset()
        self._pending = bytearray()
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> str:
        if token_id in self._skip or not 0 <= token_id < len(self._tb):
            return ""
        self._pending += self._tb[token_id]
        cut = _complete_utf8_prefix(self._pending)
        if cut == 0:
            return ""
        out = bytes(self._pending[:cut]).decode("utf-8", errors="replace")
        del self._pending[:cut]
        self.text += out
        return out

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    @property
    def pending_bytes(self) -> bytes:
        return bytes(self._pending)

    def flush(self) -> str:
        out = bytes(self._pending).decode("utf-8", errors="replace")
        self._pending.clear()
        self.text += out
        return out
