"""Masks and compiles against the default model's real 49k vocabulary
(built from its GGUF), without running the model."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from guided_helpers import SCHEMAS, gguf_vocabulary, llama_vocabulary

from adyton import Constraint, FinishReason, UnsupportedConstraint
from adyton_guided.compile import Compiler
from adyton_guided.processor import GuidedProcessor
from adyton_guided.tokenizer import TokenizerCache

pytestmark = pytest.mark.requires_model


@pytest.fixture(scope="module", params=["gguf+tokenizers", "adyton-llama"])
def vocab(request):
    return gguf_vocabulary() if request.param == "gguf+tokenizers" else llama_vocabulary()


@pytest.fixture(scope="module")
def tok(vocab):
    return TokenizerCache().get(vocab)


def processor(tok, constraint, **kw):
    compiled = Compiler().matcher(constraint, tok)
    verifiers = ["syntax", "json_schema"] if constraint.kind == "json_schema" else ["syntax"]
    defaults = {"max_tokens": None, "verifiers": verifiers, "repair": False, "repair_budget": 0, "prefetch": True}
    defaults.update(kw)
    return GuidedProcessor(constraint, compiled, tok, **defaults)


def random_walk(proc, vocab, rng, max_steps=200):
    """A 'model' with random logits: whatever it samples, the mask must keep
    the output valid."""
    proc.reset()
    generated: list[int] = []
    out = bytearray()
    for _ in range(max_steps):
        logits = rng.standard_normal(vocab.size).astype(np.float32) * 3
        proc.process(generated, logits)
        finite = np.isfinite(logits)
        assert finite.any()
        p = np.exp(logits[finite] - logits[finite].max())
        token = int(rng.choice(np.flatnonzero(finite), p=p / p.sum()))
        proc.accept(token)
        generated.append(token)
        if token in vocab.eos_token_ids:
            return out.decode("utf-8"), FinishReason.STOP
        out += vocab.token_bytes[token]
    return out.decode("utf-8", errors="replace"), FinishReason.LENGTH


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_model_20_samples_validate(tok, vocab, name):
    schema = SCHEMAS[name]
    proc = processor(tok, Constraint(kind="json_schema", value=schema))
    rng = np.random.default_rng(1234)
    for _ in range(20):
        text, finish = random_walk(proc, vocab, rng)
        assert finish is FinishReason.STOP, text
        value = json.loads(text)
        jsonschema.validate(value, schema)
        if name == "pattern":
            assert value["zip"].isascii()
        report = proc.report(text, finish)
        assert report["accepted"] is True, report


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_real_tokenizations_of_valid_documents_are_allowed(tok, vocab, name):
    """The canonical tokenization of a valid document passes every mask
    (with a naive byte-wise encoder llguidance got many of these wrong)."""
    docs = {
        "nested": {"user": {"name": "Ada Lovelace", "age": 36}, "active": True},
        "array": {"tags": ["a", "bb", "ccc"]},
        "enum": {"color": "green", "size": "M"},
        "bounds": {"n": 42, "m": -4},
        "pattern": {"zip": "02139", "code": "ABC-12"},
    }
    text = json.dumps(docs[name])
    proc = processor(tok, Constraint(kind="json_schema", value=SCHEMAS[name]))
    proc.reset()
    generated = []
    for token in vocab.encode(text) + [vocab.eos_token_ids[0]]:
        logits = np.zeros(vocab.size, dtype=np.float32)
        proc.process(generated, logits)
        assert np.isfinite(logits[token]), (vocab.token_bytes[token], b"".join(vocab.token_bytes[t] for t in generated))
        proc.accept(token)
        generated.append(token)
    assert proc.report(text, FinishReason.STOP)["accepted"]


def test_control_tokens_and_leading_whitespace_are_masked(tok, vocab):
    proc = processor(tok, Constraint(kind="json_object"))
    proc.reset()
    logits = np.zeros(vocab.size, dtype=np.float32)
    proc.process([], logits)
    allowed = [vocab.token_bytes[i] for i in np.flatnonzero(np.isfinite(logits))]
    assert allowed and all(b.startswith(b"{") for b in allowed)
    assert not any(np.isfinite(logits[i]) for i in vocab.control_token_ids)


def test_choice_and_regex_and_grammar(tok, vocab):
    rng = np.random.default_rng(7)
    cases = [
        (Constraint(kind="choice", value=["positive", "negative", "neutral"]),
         lambda t: t in ("positive", "negative", "neutral")),
        (Constraint(kind="regex", value=r"\d{3}-\d{4}"),
         lambda t: len(t) == 8 and t[3] == "-" and t.replace("-", "").isascii() and t.replace("-", "").isdigit()),
        (Constraint(kind="grammar", syntax="gbnf",
                    value='root ::= "(" expr ")"\nexpr ::= [0-9] | [0-9] "+" [0-9]'),
         lambda t: t.startswith("(") and t.endswith(")")),
        (Constraint(kind="grammar", syntax="lark",
                    value='start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"'),
         lambda t: t in ("The answer is yes.", "The answer is no.")),
    ]
    for constraint, check in cases:
        proc = processor(tok, constraint)
        for _ in range(20):
            text, finish = random_walk(proc, vocab, rng)
            assert finish is FinishReason.STOP and check(text), (constraint, text)
            assert proc.report(text, finish)["accepted"]


def test_matchers_are_cached_and_step_through_a_document(tok, vocab):
    """Compiling against the real vocabulary, the cache, and the per-token
    mask + accept path. (Their speed is a benchmark's business:
    bench/guided_decode.py prints compile p50/p99 and the per-token cost.)"""
    compiler = Compiler()
    for i, schema in enumerate(SCHEMAS.values()):
        compiler.matcher(Constraint(kind="json_schema", value={**schema, "title": f"s{i}"}), tok)
    assert compiler.misses == len(SCHEMAS) and compiler.hits == 0
    nested = Constraint(kind="json_schema", value=SCHEMAS["nested"])
    first = compiler.matcher(nested, tok)
    assert compiler.matcher(nested, tok) is first and compiler.hits == 1
    proc = processor(tok, nested, prefetch=False)
    proc.reset()
    text = json.dumps({"user": {"name": "Bob", "age": 7}, "active": False})
    generated = []
    for token in vocab.encode(text):
        logits = np.zeros(vocab.size, dtype=np.float32)
        proc.process(generated, logits)
        assert logits[token] == 0.0, vocab.token_bytes[token]  # allowed, not masked
        proc.accept(token)
        generated.append(token)
    assert proc.is_complete()


def test_tokenizer_cache_by_identity_and_content(vocab):
    cache = TokenizerCache()
    a = cache.get(vocab)
    assert cache.get(vocab) is a
    from adyton import Vocabulary
    twin = Vocabulary(list(vocab.token_bytes), list(vocab.eos_token_ids), vocab.control_token_ids, vocab.encode)
    b = cache.get(twin)
    assert b.lltok is a.lltok  # same content: no rebuild


def test_unsupported_keyword_is_named(tok):
    with pytest.raises(UnsupportedConstraint, match="uniqueItems"):
        Compiler().matcher(Constraint(kind="json_schema", value={"type": "array", "uniqueItems": True}), tok)
