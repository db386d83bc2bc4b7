"""The OpenAI surface (adyton-openai) handing response_format and Axionic
policies to adyton-guided, with the scripted backend."""

from __future__ import annotations

import json

import pytest
from guided_helpers import JSON_VOCAB, CountingLimiter, LimiterPlugin

import adyton_guided
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend

adyton_openai = pytest.importorskip("adyton_openai", reason="adyton-openai is not installed")

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}
SCRIPT = ['{', '"', 'a', '"', ': ', '7', '}']
USER = [{"role": "user", "content": "hi"}]


def app_with(tmp_path, limiter):
    return create_app(settings={"home": str(tmp_path / "home")},
                      plugins=[adyton_guided, adyton_openai, LimiterPlugin(limiter),
                               BackendPlugin(ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB))],
                      load_entrypoints=False)


async def post(app, body):
    async with app.test_app() as test_app:
        r = await test_app.test_client().post("/v1/chat/completions", json=body)
        return r.status_code, await r.get_json(), r.headers


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}},
    {"response_format": {"type": "json_object"}},
    {"policy": {"sampling": {"method": "guided-generation", "temperature": 0},
                "constraints": {"json_mode": True, "json_schema": SCHEMA}}},
])
async def test_openai_constrained(tmp_path, extra):
    limiter = CountingLimiter()
    status, body, headers = await post(app_with(tmp_path, limiter),
                                       {"model": "scripted-model", "messages": USER, "max_tokens": 20, **extra})
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 7}
    assert headers["x-adyton-guided"] == "enforced"


@pytest.mark.parametrize("extra, needle", [
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
     "uniqueItems"),
    ({"policy": {"constraints": {"regex_pattern": "a["}}}, "unclosed"),
])
async def test_openai_refusals_use_no_quota(tmp_path, extra, needle):
    limiter = CountingLimiter()
    status, body, _ = await post(app_with(tmp_path, limiter),
                                 {"model": "scripted-model", "messages": USER, **extra})
    assert status == 400, body
    assert needle in body["error"]["message"]
    assert limiter.reserved == 0


# -- tool calls -------------------------------------------------------------------------------

TOOL_VOCAB = JSON_VOCAB + ["<tool_call>", "</tool_call>", "<", "tool", "_call", ">", "/", "add", "arguments",
                           "It", " is", " sunny"]
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


def tool_app(tmp_path, limiter, script):
    return create_app(settings={"home": str(tmp_path / "home")},
                      plugins=[adyton_guided, adyton_openai, LimiterPlugin(limiter),
                               BackendPlugin(ScriptedBackend(script, extra_vocab=TOOL_VOCAB))],
                      load_entrypoints=False)


async def test_required_forces_a_valid_call_whatever_the_model_prefers(tmp_path):
    """The scripted 'model' wants to answer in text: the constraint makes it call."""
    limiter = CountingLimiter()
    app = tool_app(tmp_path, limiter, ["It", " is", " sunny"])
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        status, body, headers = await post(app, {"model": "scripted-model", "messages": USER, "tools": [ADD],
                                                 "tool_choice": choice, "max_tokens": 40, "temperature": 0})
        assert status == 200, body
        c = body["choices"][0]
        assert c["finish_reason"] == "tool_calls", c
        (call,) = c["message"]["tool_calls"]
        assert call["function"]["name"] == "add"
        assert isinstance(json.loads(call["function"]["arguments"])["a"], int)
        assert headers["x-adyton-guided"] == "enforced"


async def test_auto_leaves_text_free_and_adds_nothing_to_the_response(tmp_path):
    limiter = CountingLimiter()
    app = tool_app(tmp_path, limiter, ["It", " is", " sunny"])
    status, body, headers = await post(app, {"model": "scripted-model", "messages": USER, "tools": [ADD],
                                             "max_tokens": 10, "temperature": 0})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "It is sunny"
    assert "reports" not in body["choices"][0] and "x-adyton-guided" not in headers


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
async def test_an_unenforceable_tool_schema_uses_no_quota(tmp_path, tool_choice):
    limiter = CountingLimiter()
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}}}
    status, body, _ = await post(tool_app(tmp_path, limiter, ["It"]),
                                 {"model": "scripted-model", "messages": USER, "tools": [bad],
                                  "tool_choice": tool_choice})
    assert status == 400, body
    assert "tool 'f'" in body["error"]["message"] and "uniqueItems" in body["error"]["message"]
    assert limiter.reserved == 0


async def test_required_and_a_response_format_are_refused_together(tmp_path):
    limiter = CountingLimiter()
    status, body, _ = await post(tool_app(tmp_path, limiter, ["It"]), {
        "model": "scripted-model", "messages": USER, "tools": [ADD], "tool_choice": "required",
        "response_format": {"type": "json_object"}})
    assert status == 400 and "one constraint per request" in body["error"]["message"]
    assert limiter.reserved == 0


async def test_a_constrained_call_streams_its_arguments(tmp_path):
    app = tool_app(tmp_path, CountingLimiter(), ["It", " is", " sunny"])
    async with app.test_app() as test_app:
        r = await test_app.test_client().post("/v1/chat/completions", json={
            "model": "scripted-model", "messages": USER, "tools": [ADD], "tool_choice": "required",
            "max_tokens": 40, "temperature": 0, "stream": True})
        assert r.status_code == 200
        text = (await r.get_data()).decode()
    chunks = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"] == {"name": "add", "arguments": ""}
    fragments = [c["function"]["arguments"] for c in calls[1:]]
    assert len(fragments) > 1 and all(c["index"] == 0 and set(c) == {"index", "function"} for c in calls[1:])
    assert isinstance(json.loads("".join(fragments))["a"], int)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
