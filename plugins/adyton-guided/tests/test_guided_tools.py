"""The tool_calls constraint and the declared-keys reading of JSON schemas,
against the default model's real vocabulary (a random-logits "model": every
output it can produce must be valid)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from guided_helpers import llama_vocabulary

from adyton import Constraint, FinishReason, UnsupportedConstraint
from adyton.tools import split_tool_calls
from adyton_guided.compile import Compiler, declared_keys_only
from adyton_guided.processor import GuidedProcessor
from adyton_guided.tokenizer import TokenizerCache

pytestmark = pytest.mark.requires_model

TOOLS = [
    {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "unit": {"enum": ["c", "f"]}}, "required": ["city"]}},
    {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/$defs/Num"}},
        "required": ["a", "b"], "$defs": {"Num": {"type": "integer", "minimum": 0, "maximum": 9}}}},
]


@pytest.fixture(scope="module")
def vocab():
    return llama_vocabulary()


@pytest.fixture(scope="module")
def tok(vocab):
    return TokenizerCache().get(vocab)


def walk(proc, vocab, rng, prefix: str = "", max_steps=120):
    """Random logits after an optional forced prefix (tokens the 'model' chose)."""
    proc.reset()
    generated: list[int] = []
    out = bytearray()
    forced = vocab.encode(prefix) if prefix else []
    for step in range(max_steps):
        logits = rng.standard_normal(vocab.size).astype(np.float32) * 3
        proc.process(generated, logits)
        if step < len(forced):
            token = forced[step]
            assert np.isfinite(logits[token])
        else:
            finite = np.flatnonzero(np.isfinite(logits))
            p = np.exp(logits[finite] - logits[finite].max())
            token = int(rng.choice(finite, p=p / p.sum()))
        proc.accept(token)
        generated.append(token)
        if token in vocab.eos_token_ids:
            return out.decode("utf-8"), FinishReason.STOP
        out += vocab.token_bytes[token]
    return out.decode("utf-8", errors="replace"), FinishReason.LENGTH


def processor(tok, constraint, declared=True):
    compiled = Compiler().matcher(constraint, tok, declared)
    return GuidedProcessor(constraint, compiled, tok, max_tokens=None, verifiers=["syntax"],
                           repair=False, repair_budget=0, prefetch=False)


def check_calls(text, parallel):
    content, calls = split_tool_calls(text)
    assert calls and not content.strip(), text
    if not parallel:
        assert len(calls) == 1
    by_name = {t["name"]: t for t in TOOLS}
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), by_name[call.name]["parameters"])
        assert set(json.loads(call.arguments)) <= set(by_name[call.name]["parameters"]["properties"])


@pytest.mark.parametrize("parallel", [False, True])
def test_required_calls_always_parse_and_validate(tok, vocab, parallel):
    proc = processor(tok, Constraint(kind="tool_calls", value={"tools": TOOLS, "parallel": parallel}))
    rng = np.random.default_rng(5)
    for _ in range(12):
        text, finish = walk(proc, vocab, rng, max_steps=300)
        assert finish is FinishReason.STOP, text
        check_calls(text, parallel)
        assert proc.report(text, finish)["accepted"]


def test_lazy_calls_start_free_and_end_valid(tok, vocab):
    constraint = Constraint(kind="tool_calls", value={"tools": TOOLS, "parallel": False, "lazy": True})
    proc = processor(tok, constraint)
    rng = np.random.default_rng(9)
    # free text is free: a plain answer ends whenever the model likes
    text, finish = walk(proc, vocab, rng, prefix="Sure, it is sunny.", max_steps=6)
    assert text.startswith("Sure, it is sunny.")
    # once the model writes the marker, the rest is a valid call
    for _ in range(8):
        text, finish = walk(proc, vocab, rng, prefix="Let me look. <tool_call>", max_steps=300)
        assert finish is FinishReason.STOP, text
        content, calls = split_tool_calls(text)
        assert content == "Let me look. " and len(calls) == 1
        check_calls(text[len(content):], parallel=False)


def test_bad_tool_schema_is_refused_naming_the_tool(tok):
    bad = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}]
    with pytest.raises(UnsupportedConstraint, match="tool 'f'"):
        Compiler().matcher(Constraint(kind="tool_calls", source="tool_choice", value={"tools": bad}), tok)
    with pytest.raises(UnsupportedConstraint, match="non-empty list of tools"):
        Compiler().matcher(Constraint(kind="tool_calls", source="tool_choice", value={"tools": []}), tok)


def test_declared_keys_only_rewrite():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}},
                                               "c": {"type": "object", "additionalProperties": True,
                                                     "properties": {"d": {}}}},
              "$defs": {"X": {"type": "object", "properties": {"y": {}}}},
              "allOf": [{"properties": {"e": {}}}], "default": {"properties": {}}}
    out = declared_keys_only(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["additionalProperties"] is True
    assert out["$defs"]["X"]["additionalProperties"] is False
    assert "additionalProperties" not in out["allOf"][0]  # allOf members stay open
    assert out["default"] == {"properties": {}}  # data, not a schema


def test_no_extra_keys_by_default_and_the_json_schema_reading_when_off(tok, vocab):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    text = '{"a": 1, "zzz": 2}'
    for declared, allowed in ((True, False), (False, True)):
        proc = processor(tok, Constraint(kind="json_schema", value=schema), declared=declared)
        proc.reset()
        generated, ok = [], True
        for token in vocab.encode(text):
            logits = np.zeros(vocab.size, dtype=np.float32)
            proc.process(generated, logits)
            if not np.isfinite(logits[token]):
                ok = False
                break
            proc.accept(token)
            generated.append(token)
        assert ok is allowed
