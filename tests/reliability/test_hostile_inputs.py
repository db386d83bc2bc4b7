"""Hostile input (issue 15, items 1, 2, 11 and 12), against the whole
first-party stack on a real loopback socket: lone surrogates and deep JSON
anywhere get a clear 400 in the surface's own shape, never a 500; guided
schemas too deep or referring only to themselves are refused; strict types;
``//`` paths answer JSON; a time budget and a repetition stop end replies
cleanly on both wire formats.

The bad-text and deep-JSON cases run against the real default model (its
tokenizer is what raised the 500s); the rest use a scripted backend."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from hostile_helpers import Stack, error_of, full_app, start_stack, surface_of

from adyton.testing import ScriptedBackend

BAD = "a\ud800b"  # valid JSON ("a\\ud800b"), not Unicode text


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    stack = start_stack(full_app(tmp_path_factory.mktemp("home")))
    yield stack
    stack.server.stop()


def _send(stack: Stack, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    content = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return httpx.request(method, stack.url + path, content=content, headers=hdrs, timeout=60)


def _auth_for(stack: Stack, path: str) -> dict[str, str]:
    return stack.admin() if path.startswith("/admin/") else stack.auth()


def _chat(content: Any, system: Any = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": messages + [{"role": "user", "content": content}], "max_tokens": 4}


def _axiom(stack: Stack, content: str = "hi", system_prompt: str = "") -> dict[str, Any]:
    return {"model": stack.model, "sessionId": stack.account_number, "system_prompt": system_prompt,
            "messages": [{"role": "user", "content": content}]}


def _guided(**fields: Any) -> dict[str, Any]:
    return {"prompt": "Give JSON.", "method": "guided-generation", "max_new_tokens": 4, **fields}


# -- 1. lone surrogates: 400 naming the field, on every surface -------------------

SURROGATES = [
    ("/v1/chat/completions", lambda s: _chat(BAD), "messages[0].content"),
    ("/v1/chat/completions", lambda s: _chat("hi", system=BAD), "messages[0].content"),
    ("/v1/chat/completions", lambda s: _chat([{"type": "text", "text": BAD}]), "messages[0].content[0].text"),
    ("/v1/completions", lambda s: {"prompt": BAD, "max_tokens": 4}, "prompt"),
    ("/v1/completions", lambda s: {"prompt": ["ok", BAD], "max_tokens": 4}, "prompt[1]"),
    ("/v1/chat/completions", lambda s: {**_chat("hi"), "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["ok", BAD]}}}}, "response_format.json_schema.schema.enum[1]"),
    ("/api/chat", lambda s: _axiom(s, content=BAD), "messages[0].content"),
    ("/api/chat", lambda s: _axiom(s, system_prompt=BAD), "system_prompt"),
    ("/sampling/generate", lambda s: _guided(prompt=BAD, regex_pattern="[a-z]+"), "prompt"),
    ("/sampling/generate", lambda s: _guided(regex_pattern=f"({BAD})+"), "regex_pattern"),
    ("/sampling/generate", lambda s: _guided(json_schema={"enum": [BAD]}), "json_schema.enum[0]"),
    ("/v1/policies", lambda s: {"name": BAD, "constraints": {"regex_pattern": "[a-z]+"}}, "name"),
    ("/admin/accounts", lambda s: {"name": BAD}, "name"),
    # a key, not a value
    ("/v1/chat/completions", lambda s: {**_chat("hi"), "metadata": {BAD: "x"}}, "metadata.a\\ud800b"),
]


@pytest.mark.parametrize("path, body, param", SURROGATES,
                         ids=[f"{p}:{param}" for p, _, param in SURROGATES])
def test_lone_surrogate_is_a_400_naming_the_field(real, path, body, param):
    r = _send(real, "POST", path, body(real), headers=_auth_for(real, path))
    assert r.status_code == 400, r.text
    error = error_of(r, surface_of(path))
    assert error["code"] == "invalid_value"
    assert "surrogate" in error["message"]
    assert error["param"] == param


# -- 2. deep JSON: 400, never a RecursionError --------------------------------------

DEEP_PATHS = ["/v1/chat/completions", "/v1/completions", "/api/chat", "/sampling/generate", "/v1/policies",
              "/admin/accounts"]


@pytest.mark.parametrize("path", DEEP_PATHS)
@pytest.mark.parametrize("shape", ["object", "array-in-field"])
def test_deeply_nested_body_is_a_400(real, path, shape):
    if shape == "object":
        raw = b'{"a":' * 5000 + b"1" + b"}" * 5000
    else:
        raw = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = _send(real, "POST", path, raw=raw, headers=_auth_for(real, path))
    assert r.status_code == 400, r.text
    error = error_of(r, surface_of(path))
    assert error["code"] == "invalid_json"
    assert "nested too deeply" in error["message"]


def _nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _items_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):  # one JSON level per schema level
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("schema, words", [
    (_nested_schema(400), "nested too deeply"),  # the body itself is too deep
    (_items_schema(50), "nested too deeply"),  # the body is fine, the schema is not
    ({"$ref": "#"}, "refers back to itself"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
     "refers back to itself"),
], ids=["400-levels", "50-levels-of-items", "ref-root", "ref-cycle"])
@pytest.mark.parametrize("path", ["/sampling/generate", "/v1/chat/completions"])
def test_unusable_schemas_are_a_400(real, path, schema, words):
    if path == "/sampling/generate":
        body = _guided(json_schema=schema)
    else:
        body = {**_chat("hi"), "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "x", "schema": schema}}}
    r = _send(real, "POST", path, body, headers=real.auth())
    assert r.status_code == 400, r.text
    assert words in error_of(r, surface_of(path))["message"]


def test_a_recursive_schema_with_a_base_case_still_works(real):
    tree = {"type": "object", "properties": {"leaf": {"type": "boolean"},
                                             "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 1}},
            "required": ["leaf"], "additionalProperties": False}
    body = _guided(json_schema=tree, max_new_tokens=60, repair_on_failure=True, params={"seed": 7})
    r = _send(real, "POST", "/sampling/generate", body, headers=real.auth())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["verification"]["enforced"] is True
    assert out["accepted"] is True, out  # repair closes an output cut by max_new_tokens


# -- 12. strict types -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["5", 5.0, True])
def test_max_new_tokens_must_be_an_integer(real, value):
    r = _send(real, "POST", "/sampling/generate", _guided(regex_pattern="[a-z]+", max_new_tokens=value),
              headers=real.auth())
    assert r.status_code == 400, r.text
    assert error_of(r, "guided")["param"] == "max_new_tokens"


@pytest.mark.parametrize("tier", [1.9, "2", True, None])
def test_admin_tier_must_be_an_integer(real, tier):
    r = _send(real, "POST", "/admin/accounts", {"tier": tier, "name": "t"}, headers=real.admin())
    assert r.status_code == 400, r.text
    assert error_of(r, "kernel")["param"] == "tier"
    r = _send(real, "POST", "/admin/accounts", {"tier": 2, "name": "t"}, headers=real.admin())
    assert r.status_code == 201 and r.json()["tier"] == 2


@pytest.mark.parametrize("path", ["/v1//models", "/api//models", "/admin//accounts", "/v1/models/",
                                  "/sampling//generate"])
def test_double_slash_paths_answer_json_in_the_surface_shape(real, path):
    r = httpx.get(real.url + path, headers=_auth_for(real, path), timeout=30, follow_redirects=False)
    assert r.status_code in (404, 405), (r.status_code, r.text[:200])
    error_of(r, surface_of(path))


# -- 12. which answers carry x-ratelimit-* ------------------------------------------


def test_server_busy_is_a_429_with_retry_after_and_no_account_headers(tmp_path):
    backend = ScriptedBackend(["tick"] * 400, delay_s=0.01, eos_at_end=False)
    stack = start_stack(full_app(tmp_path / "home", backend, settings={"queue": {"max_waiting": 0}}))
    try:
        body = {"prompt": "x", "max_tokens": 300}
        running = threading.Thread(target=_send, args=(stack, "POST", "/v1/completions", body),
                                   kwargs={"headers": stack.auth()})
        running.start()
        assert backend.running.wait(10)
        busy = _send(stack, "POST", "/v1/completions", body, headers=stack.auth())
        assert busy.status_code == 429, busy.text
        assert error_of(busy, "openai")["code"] == "server_busy"
        assert int(busy.headers["Retry-After"]) >= 1
        # refused before the limiter was asked: nothing counted, no account headers
        assert not [h for h in busy.headers if h.lower().startswith("x-ratelimit-")]
        running.join(30)
        ok = _send(stack, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, headers=stack.auth())
        assert ok.status_code == 200 and "x-ratelimit-remaining-requests" in ok.headers
    finally:
        stack.server.stop()


# -- 11. the time budget and the repetition stop, on both wire formats ----------------

SENTENCE = ["The", " cat", " sat", " on", " the", " mat", "."]


def _looping(delay_s: float = 0.0) -> ScriptedBackend:
    return ScriptedBackend(SENTENCE, eos_at_end=False, delay_s=delay_s)


def _reply(stack: Stack, wire: str, max_tokens: int = 300) -> tuple[str, str | None]:
    """(text, finish_reason) of one request on ``wire`` (Axiom has no finish reason)."""
    if wire == "axiom":
        r = _send(stack, "POST", "/api/chat", _axiom(stack, "tell me"))
        assert r.status_code == 200, r.text
        return r.json()["message"], None
    r = _send(stack, "POST", "/v1/chat/completions",
              {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": max_tokens, "temperature": 0},
              headers=stack.auth())
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def test_axiom_stops_a_degenerate_loop_by_default(tmp_path):
    stack = start_stack(full_app(tmp_path / "home", _looping()))
    try:
        text, _ = _reply(stack, "axiom")
        # 32 tokens (4 repeats of the 7-token sentence and then some), not axiom.max_tokens (2048)
        assert text == "".join((SENTENCE * 5)[:32])
    finally:
        stack.server.stop()


def test_openai_repetition_stop_is_a_setting_and_off_by_default(tmp_path):
    stack = start_stack(full_app(tmp_path / "a", _looping()))
    try:
        text, finish = _reply(stack, "openai", max_tokens=300)
        assert finish == "length" and text == "".join((SENTENCE * 50)[:300])
    finally:
        stack.server.stop()
    stack = start_stack(full_app(tmp_path / "b", _looping(), settings={"openai": {"stop_repetition": 4}}))
    try:
        text, finish = _reply(stack, "openai", max_tokens=300)
        assert finish == "length" and text == "".join((SENTENCE * 5)[:32])
        # a caller who shapes the output (stop strings) is not second-guessed
        r = _send(stack, "POST", "/v1/chat/completions",
                  {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100, "stop": ["zebra"],
                   "temperature": 0},
                  headers=stack.auth())
        assert r.json()["usage"]["completion_tokens"] == 100
    finally:
        stack.server.stop()


@pytest.mark.parametrize("wire", ["axiom", "openai"])
def test_time_budget_ends_the_reply_with_what_was_produced(tmp_path, wire):
    # 0.05 s a token: 300 tokens take 15 s; the budget is 0.5 s
    settings = {wire: {"time_budget_s": 0.5, "stop_repetition": None}}
    stack = start_stack(full_app(tmp_path / "home", _looping(delay_s=0.05), settings=settings))
    try:
        started = time.monotonic()
        text, finish = _reply(stack, wire, max_tokens=300)
        assert time.monotonic() - started < 14  # ended long before max_tokens
        assert text and "".join(SENTENCE * 60).startswith(text)
        assert len(text) < len("".join((SENTENCE * 50)[:300]))
        if wire == "openai":
            assert finish == "length"
    finally:
        stack.server.stop()
