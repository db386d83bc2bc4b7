"""``adyton.read_json_body``: the one reader of JSON request bodies (its
checks, and that a wire format's route renders its refusals in its own
shape). The whole stack's surfaces are covered by
``tests/reliability/test_hostile_inputs.py``."""

from __future__ import annotations

import pytest

from adyton import InvalidRequest, check_text
from adyton.body import parse_json_body


@pytest.mark.parametrize("raw, code, words", [
    (b"", "invalid_json", "empty"),
    (b"\xff{}", "invalid_json", "UTF-8"),
    (b'{"a": NaN}', "invalid_json", "NaN is not valid JSON"),
    (b"[1]", "invalid_json", "must be a JSON object, not an array"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json", "nested too deeply"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "invalid_json", "nested too deeply"),
    (b'{"m": [{"content": "a\\ud800b"}]}', "invalid_value", "surrogate"),
    (b'{"m": {"\\udfff": 1}}', "invalid_value", "surrogate"),
])
def test_refusals(raw, code, words):
    with pytest.raises(InvalidRequest) as caught:
        parse_json_body(raw, max_depth=64)
    assert caught.value.code == code
    assert words in caught.value.message


def test_the_refusal_names_the_field_and_is_itself_valid_text():
    with pytest.raises(InvalidRequest) as caught:
        parse_json_body(b'{"messages": [{"content": "ok"}, {"content": "a\\ud800"}]}')
    assert caught.value.param == "messages[1].content"
    with pytest.raises(InvalidRequest) as caught:
        parse_json_body(b'{"metadata": {"k\\ud800": "v"}}')
    assert caught.value.param == "metadata.k\\ud800"  # escaped: the message must encode
    caught.value.message.encode("utf-8")
    with pytest.raises(InvalidRequest) as caught:
        parse_json_body(b'{"a":' * 70 + b"1" + b"}" * 70)
    assert caught.value.param == ".".join(["a"] * 64)


def test_valid_bodies_pass_unchanged():
    assert parse_json_body(b'{"emoji": "\\ud83d\\ude00", "deep": [[[1]]]}') == {"emoji": "\U0001F600",
                                                                             "deep": [[[1]]]}
    assert parse_json_body(b"  ", empty_ok=True) == {}
    assert parse_json_body(b'{"a":' * 60 + b"1" + b"}" * 60, max_depth=64)
    assert check_text("plain", "f") == "plain"
    with pytest.raises(InvalidRequest):
        check_text("\udc80", "f")


def test_the_walk_is_skipped_only_where_it_cannot_fail():
    """parse_json_body walks the value only when the raw body could hold a
    surrogate (a \\u escape) or nest deeper than the limit (more brackets):
    the edges of both."""
    nested = b'{"a":' * 7 + b"1" + b"}" * 7  # 7 levels, 7 brackets
    assert parse_json_body(nested, max_depth=7)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_json_body(b'{"b": [' + nested + b"]}", max_depth=8)  # 9 levels
    # brackets inside strings count, but only nesting fails
    assert parse_json_body(b'{"s": "[[[[[[[[[[{{{{{{{{", "t": [1]}', max_depth=2) == {
        "s": "[[[[[[[[[[{{{{{{{{", "t": [1]}
    # an escaped backslash before a u is no \u escape; an escaped surrogate pair is text
    assert parse_json_body(b'{"p": "C:\\\\users"}') == {"p": "C:\\users"}
    assert parse_json_body(b'{"p": "\\\\ud800"}') == {"p": "\\ud800"}
    with pytest.raises(InvalidRequest, match="surrogate"):
        parse_json_body(b'{"p": "\\\\\\ud800"}')  # a backslash, then a lone surrogate
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_json_body("\ufeff{}".encode())  # as json.loads: a BOM is not JSON


async def test_a_route_renders_the_refusal_in_its_own_shape(make_app):
    async with make_app(settings={"server": {"max_json_depth": 8}}).test_app() as test_app:
        client = test_app.test_client()
        deep = {"prompt": "x", "extra": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}
        r = await client.post("/t/generate", json=deep)
        assert r.status_code == 400
        assert (await r.get_json())["err"]["code"] == "invalid_json"  # the test wire's shape
        r = await client.post("/t/generate", data=b'{"prompt": "a\\ud800"}',
                              headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert (await r.get_json())["err"]["code"] == "invalid_value"
