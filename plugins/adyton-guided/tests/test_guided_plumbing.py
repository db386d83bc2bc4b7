"""Guided decoding through the kernel with the scripted backend."""

from __future__ import annotations

import json

import pytest
from guided_helpers import JSON_VOCAB

from adyton.testing import ScriptedBackend

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}


async def post(app, path, body, headers=None):
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post(path, json=body, headers=headers or {})
        return response.status_code, await response.get_json(), response.headers


async def test_schema_enforced_against_a_script_that_would_break_it(make_app):
    # the "model" wants to write {"b": x}; the mask forces the schema
    backend = ScriptedBackend(['{', '"', 'b', '"', ': ', 'x', '}'], extra_vocab=JSON_VOCAB)
    app = make_app(backend)
    status, body, headers = await post(app, "/g/generate", {
        "prompt": "p", "max_tokens": 20, "temperature": 0,
        "constraints": [{"kind": "json_schema", "value": SCHEMA}]})
    assert status == 200, body
    assert headers["x-adyton-guided"] == "enforced"
    choice = body["choices"][0]
    value = json.loads(choice["text"])
    assert set(value) == {"a"} and isinstance(value["a"], int)
    report = choice["reports"]["guided"]
    assert report["accepted"] is True
    assert report["verifiers"]["json_schema"] == {"passed": True}
    assert choice["finish_reason"] == "stop"


def _req(constraint, **kw):
    body = {"prompt": "p", "max_tokens": 20, "temperature": 0, "constraints": [constraint]}
    body.update(kw)
    return body


@pytest.mark.parametrize("constraint, script, expected", [
    ({"kind": "regex", "value": r"\d{3}"}, ['a', '1', 'x', '2', '3', 'x'], None),
    ({"kind": "choice", "value": ["yes", "no"]}, ['hello', 'no', 'x'], "no"),
    ({"kind": "json_object"}, ['hello', '}'], "{}"),
    ({"kind": "grammar", "syntax": "lark", "value": 'start: "a" ("b" | "c")+'}, ['a', 'b', 'c', 'x'], "abc"),
    ({"kind": "grammar", "syntax": "gbnf", "value": 'root ::= "a" [0-9]'}, ['a', 'x', '7'], None),
    ({"kind": "grammar", "value": 'root ::= "yes" | "no"'}, ['no'], "no"),
])
async def test_kinds(make_app, constraint, script, expected):
    app = make_app(ScriptedBackend(script, extra_vocab=JSON_VOCAB))
    status, body, headers = await post(app, "/g/generate", _req(constraint))
    assert status == 200, body
    choice = body["choices"][0]
    report = choice["reports"]["guided"]
    assert report["accepted"] is True, (choice, report)
    assert report["constraint"] == constraint["kind"]
    if expected is not None:
        assert choice["text"] == expected
    if constraint["kind"] == "regex":
        assert len(choice["text"]) == 3 and choice["text"].isdigit()
    assert headers["x-adyton-guided"] == "enforced"


@pytest.mark.parametrize("constraint, needle", [
    ({"kind": "json_schema", "value": {"type": "object", "properties": {"a": {"type": "nope"}}}},
     "invalid JSON schema"),
    ({"kind": "json_schema", "value": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
    ({"kind": "json_schema", "value": {"type": "object", "if": {}, "then": {}}}, "if"),
    ({"kind": "json_schema", "value": {"type": "string", "format": "no-such-format"}}, "no-such-format"),
    ({"kind": "json_schema", "value": "not a schema"}, "must be a JSON object"),
    ({"kind": "regex", "value": "a["}, "unclosed character class"),
    ({"kind": "regex", "value": ""}, "non-empty"),
    ({"kind": "grammar", "syntax": "lark", "value": "start: foo"}, "foo"),
    ({"kind": "grammar", "syntax": "gbnf", "value": "root ::= undefined-rule"}, "undefined"),
    ({"kind": "choice", "value": []}, "non-empty list"),
    ({"kind": "json_object", "value": {"type": "array"}}, "takes no value"),
])
async def test_refusals_are_400_before_the_limiter(make_app, limiter, constraint, needle):
    backend = ScriptedBackend(extra_vocab=JSON_VOCAB)
    app = make_app(backend)
    status, body, _ = await post(app, "/g/generate", _req(constraint))
    assert status == 400, body
    assert body["err"]["code"] == "unsupported_constraint"
    assert needle in body["err"]["message"]
    assert limiter.reserved == 0
    assert backend.generations == 0


async def test_two_constraints_refused(make_app, limiter):
    app = make_app()
    status, body, _ = await post(app, "/g/generate", {
        "prompt": "p", "constraints": [{"kind": "json_object"}, {"kind": "regex", "value": "a"}]})
    assert status == 400 and "one constraint per request" in body["err"]["message"]
    assert limiter.reserved == 0


async def test_backend_without_vocabulary_refuses(make_app, limiter):
    class Blind(ScriptedBackend):
        def vocabulary(self, model):
            return None

    app = make_app(Blind(extra_vocab=JSON_VOCAB))
    status, body, _ = await post(app, "/g/generate", _req({"kind": "json_object"}))
    assert status == 400 and "does not describe its vocabulary" in body["err"]["message"]
    assert limiter.reserved == 0


LONG = ['{', '"', 'a', '"', ': ', '"'] + ['hello'] * 30
STR_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
#: the STR_SCHEMA constraint, with 10 tokens of repair past max_tokens
STR_SCHEMA_REPAIRED = {"kind": "json_schema", "value": STR_SCHEMA,
                       "options": {"repair_on_failure": True, "repair_budget": 10}}


async def test_truncation_without_repair_reports_invalid(make_app):
    app = make_app(ScriptedBackend(LONG, extra_vocab=JSON_VOCAB))
    status, body, _ = await post(app, "/g/generate", _req(
        {"kind": "json_schema", "value": STR_SCHEMA}, max_tokens=8))
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    report = choice["reports"]["guided"]
    assert report["accepted"] is False and report["complete"] is False
    assert report["verifiers"]["syntax"]["passed"] is False


async def test_truncation_with_repair_completes(make_app, limiter):
    app = make_app(ScriptedBackend(LONG, extra_vocab=JSON_VOCAB))
    status, body, _ = await post(app, "/g/generate", _req(STR_SCHEMA_REPAIRED, max_tokens=8))
    assert status == 200
    choice = body["choices"][0]
    value = json.loads(choice["text"])
    assert value["a"].startswith("hello")
    report = choice["reports"]["guided"]
    assert report["accepted"] is True
    assert report["repair"]["used"] is True
    assert choice["finish_reason"] == "stop"
    assert 8 < body["usage"]["completion_tokens"] <= 18


async def test_repair_closes_the_string_before_brackets(make_app):
    # Inside a string "]" and "}" are content, not closers: a model that loves
    # "]" must still get the closing quote first (found with the real model,
    # which wrote {"story": "...}}}}]]]]]]... until the budget ran out).
    script = ['{', '"', 'a', '"', ': ', '"'] + [']'] * 30
    app = make_app(ScriptedBackend(script, extra_vocab=JSON_VOCAB))
    status, body, _ = await post(app, "/g/generate", _req(STR_SCHEMA_REPAIRED, max_tokens=8))
    assert status == 200
    choice = body["choices"][0]
    assert choice["text"] == '{"a": "]]"}'
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 10
    report = choice["reports"]["guided"]
    assert report["accepted"] is True
    assert report["repair"] == {"used": True, "extra_tokens": 2, "budget": 10}


async def test_repair_ends_a_complete_output_at_once(make_app):
    # a regex complete at max_tokens that could go on: end-of-sequence, not more
    app = make_app(ScriptedBackend(['a'] * 30, extra_vocab=JSON_VOCAB))
    _status, body, _ = await post(app, "/g/generate", _req(
        {"kind": "regex", "value": "a+", "options": {"repair_on_failure": True, "repair_budget": 5}},
        max_tokens=3))
    choice = body["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("aaa", "stop")
    assert body["usage"]["completion_tokens"] == 3
    assert choice["reports"]["guided"]["repair"] == {"used": False, "extra_tokens": 0, "budget": 5}


def test_json_tail_completion():
    from adyton_guided.processor import JsonTail

    def completion(prefix):
        tail = JsonTail()
        tail.feed(prefix.encode())
        return tail.completion().decode()

    assert completion('{"a": [1, {"b": "x') == '"}]}'
    assert completion('{"a": "x]}\\\\"') == "}"  # brackets in a string, an escaped backslash
    assert completion('{"a": "say \\') == '""}'  # a pending escape: \" then the quote
    assert completion('["\\u00') == '00"]'
    assert completion('{"a": 1}') == ""


async def test_repair_budget_exhausted_reports_invalid(make_app):
    # an array that must have 20 items cannot be closed within 2 extra tokens
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 20}
    script = ['['] + ['1', ', '] * 40
    app = make_app(ScriptedBackend(script, extra_vocab=JSON_VOCAB))
    _status, body, _ = await post(app, "/g/generate", _req(
        {"kind": "json_schema", "value": schema,
         "options": {"repair_on_failure": True, "repair_budget": 2}}, max_tokens=5))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7
    assert choice["reports"]["guided"]["accepted"] is False


async def test_n_choices_reset_the_matcher(make_app):
    app = make_app(ScriptedBackend(['{', '"', 'a', '"', ': ', '1', '}'], extra_vocab=JSON_VOCAB))
    status, body, _ = await post(app, "/g/generate", _req(
        {"kind": "json_schema", "value": SCHEMA}, n=3))
    assert status == 200
    assert [c["text"] for c in body["choices"]] == ['{"a": 1}'] * 3
    assert all(c["reports"]["guided"]["accepted"] for c in body["choices"])


@pytest.mark.parametrize("prefetch", [True, False])
async def test_prefetch_on_or_off_gives_the_same_result(make_app, prefetch):
    app = make_app(ScriptedBackend(['{', '"', 'a', '"', ': ', '1', '2', '}'], extra_vocab=JSON_VOCAB),
                   settings={"guided": {"prefetch_masks": prefetch}})
    _status, body, _ = await post(app, "/g/generate", _req({"kind": "json_schema", "value": SCHEMA}))
    assert body["choices"][0]["text"] == '{"a": 12}'


async def test_unicode_digits_are_not_allowed_by_backslash_d(make_app):
    backend = ScriptedBackend(['٣', '1', '2', '3'], extra_vocab=JSON_VOCAB)
    app = make_app(backend)
    _status, body, _ = await post(app, "/g/generate", _req({"kind": "regex", "value": r"\d+"}, max_tokens=3))
    text = body["choices"][0]["text"]
    assert len(text) == 3 and text.isascii() and text.isdigit()


async def test_whitespace_is_bounded_in_json(make_app):
    # a model that wants to emit newlines/spaces forever cannot
    backend = ScriptedBackend(['{', '\n', '  ', '\n', '"', 'a', '"', ': ', '1', '}'], extra_vocab=JSON_VOCAB)
    app = make_app(backend)
    _status, body, _ = await post(app, "/g/generate", _req({"kind": "json_schema", "value": SCHEMA}))
    assert "\n" not in body["choices"][0]["text"]
    assert list(json.loads(body["choices"][0]["text"])) == ["a"]
