"""The OpenAI surface (adyton-openai) handing response_format and Axionic
policies to adyton-guided, with the scripted backend."""

from __future__ import annotations

import json

import pytest

import adyton_guided
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend
from guided_helpers import JSON_VOCAB, CountingLimiter, LimiterPlugin

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
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
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
