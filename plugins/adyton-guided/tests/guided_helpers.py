"""Helpers of the adyton-guided tests (the fixtures are in ``conftest.py``): a
minimal test wire format that takes a kernel GenerationRequest as JSON, a
counting limiter (to show refusals never reach the limits), and the default
model's real vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from quart import Blueprint, jsonify, request

from adyton import (
    AdytonError,
    Credentials,
    GenerationRequest,
    InvalidRequest,
    Limiter,
    Reservation,
    WireFormat,
    current_kernel,
    hookimpl,
)
from adyton.testing import require_model

JSON_VOCAB = ['{', '}', '"', ':', ': ', ',', ', ', ' ', '[', ']', 'a', 'b', 'c', 'name', 'age', 'x',
              '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'yes', 'no', 'true', 'false', 'null',
              '-', '.', 'hello', '\n', '  ']

class GWire(WireFormat):
    """POST /g/generate: a GenerationRequest as JSON -> choices with reports."""

    name = "gwire"
    url_prefixes = ("/g/",)

    def __init__(self) -> None:
        bp = Blueprint("gwire", __name__)
        bp.add_url_rule("/g/generate", "generate", self.generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self):
        return self._bp

    def render_error(self, error: AdytonError):
        response = jsonify({"err": {"status": error.status, "code": error.code, "message": error.message,
                                    "param": error.param}})
        response.status_code = error.status
        return response

    async def generate(self):
        body = await request.get_json(force=True, silent=True)
        try:
            gen_request = GenerationRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(str(exc)) from None
        generation = await current_kernel().pipeline.submit(
            gen_request, Credentials(kind="none", wire_format=self.name))
        result = await generation.result()
        response = jsonify({
            "choices": [{"text": c.text, "finish_reason": c.finish_reason.value, "reports": c.reports}
                        for c in result.choices],
            "usage": result.usage.as_dict(),
        })
        response.headers.update(result.headers)
        return response


class GWirePlugin:
    __name__ = "gwire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(GWire())


class CountingLimiter(Limiter):
    name = "counting"

    def __init__(self) -> None:
        self.reserved = 0
        self.settled: list[str] = []

    async def reserve(self, principal, cost):
        self.reserved += 1
        return Reservation(principal=principal, cost=cost)

    async def settle(self, reservation, usage, outcome):
        self.settled.append(outcome)


class LimiterPlugin:
    __name__ = "counting-limiter"

    def __init__(self, limiter: CountingLimiter) -> None:
        self.limiter = limiter

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


#: JSON schemas the real-vocabulary and real-model tests constrain output to
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "user": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"], "additionalProperties": False},
            "active": {"type": "boolean"}},
        "required": ["user", "active"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "M", "L"]}},
        "required": ["color", "size"], "additionalProperties": False},
    "bounds": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 10, "maximum": 99},
        "m": {"type": "integer", "exclusiveMinimum": -5, "maximum": 5}},
        "required": ["n", "m"], "additionalProperties": False},
    "pattern": {"type": "object", "properties": {
        "zip": {"type": "string", "pattern": "^\\d{5}$"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
        "required": ["zip", "code"], "additionalProperties": False},
}


# --------------------------------------------------------------------------
# The default model's real vocabulary, built from its GGUF (tests only; the
# llama backend builds its own)
# --------------------------------------------------------------------------

_VOCAB_CACHE: dict[str, object] = {}


# A copy of adyton_llama.tokenizer.gpt2_bytes_to_unicode(): gguf_vocabulary must not need adyton-llama.
def _byte_decoder() -> dict[str, int]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def gguf_vocabulary(path: Path | None = None):
    """An adyton.Vocabulary for the GGUF's GPT-2-style BPE tokenizer, with a
    real ``tokenizers`` encoder (SmolLM2: digits split, byte-level BPE)."""
    path = require_model(Path(path) if path else None)  # skips, or fails under ADYTON_REQUIRE_MODEL
    key = str(path)
    if key in _VOCAB_CACHE:
        return _VOCAB_CACHE[key]
    gguf = pytest.importorskip("gguf")
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers

    from adyton import Vocabulary

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    if fields["tokenizer.ggml.model"].contents() != "gpt2":
        pytest.skip("the test vocabulary builder only knows GPT-2-style BPE")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    eos = int(fields["tokenizer.ggml.eos_token_id"].contents())
    control = frozenset(i for i, t in enumerate(types) if t in (3, 4))  # CONTROL, USER_DEFINED
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tk = tokenizers.Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    dec = _byte_decoder()
    token_bytes = [t.encode() if i in control else bytes(dec[ch] for ch in t) for i, t in enumerate(tokens)]

    def encode(text: str) -> list[int]:
        return tk.encode(text, add_special_tokens=False).ids

    vocab = Vocabulary(token_bytes=token_bytes, eos_token_ids=[eos], control_token_ids=control, encode=encode)
    _VOCAB_CACHE[key] = vocab
    return vocab


def llama_vocabulary(path: Path | None = None):
    """The same vocabulary through adyton-llama's own GGUF tokenizer (what the
    backend hands to samplers)."""
    path = require_model(Path(path) if path else None)
    key = "llama:" + str(path)
    if key in _VOCAB_CACHE:
        return _VOCAB_CACHE[key]
    mod = pytest.importorskip("adyton_llama.tokenizer", reason="adyton-llama is not installed")
    from adyton import Vocabulary

    tk = mod.GGUFTokenizer.from_gguf(path)
    eos = [tk.eos_id] + sorted(set(tk.eos_ids) - {tk.eos_id})
    vocab = Vocabulary(token_bytes=list(tk.token_bytes()), eos_token_ids=eos,
                       control_token_ids=frozenset(tk.control_token_ids),
                       encode=lambda text: tk.encode(text, parse_special=False))
    _VOCAB_CACHE[key] = vocab
    return vocab
