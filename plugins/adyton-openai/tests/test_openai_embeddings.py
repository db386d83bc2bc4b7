"""POST /v1/embeddings with the official SDK against a real hypercorn server
and a scripted backend (bag-of-words vectors): shapes, float and base64,
token-array inputs, usage in the limits ledger, and every refusal in the
OpenAI error shape."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from openai_helpers import Accounts

from adyton.testing import ScriptedBackend


@pytest.fixture
def accounts():
    return Accounts()


@pytest.fixture
def server(serve, accounts):
    return serve(ScriptedBackend(embedding_dimensions=32),
                 ScriptedBackend(name="plain", models=("plain-model",)), plugins=[accounts])


def test_float_and_base64_agree(server, sdk, accounts):
    client = sdk(server, api_key="sk-a")
    texts = ["red apple pie", "red apple pie", "quantum tunnelling of electrons"]
    r = client.embeddings.create(model="scripted-model", input=texts, encoding_format="float")
    assert r.object == "list" and r.model == "scripted-model"
    assert [d.index for d in r.data] == [0, 1, 2] and all(d.object == "embedding" for d in r.data)
    vectors = [np.array(d.embedding, dtype=np.float32) for d in r.data]
    assert all(v.shape == (32,) for v in vectors)
    assert np.array_equal(vectors[0], vectors[1]) and not np.array_equal(vectors[0], vectors[2])
    assert r.usage.prompt_tokens == 10 and r.usage.total_tokens == 10
    # the SDK's default asks for base64 and decodes it; both give the same floats
    default = client.embeddings.create(model="scripted-model", input=texts)
    assert [d.embedding for d in default.data] == [d.embedding for d in r.data]
    raw = httpx.post(server.base_url + "/v1/embeddings", headers={"Authorization": "Bearer sk-a"},
                     json={"model": "scripted-model", "input": "red apple pie", "encoding_format": "base64"})
    assert raw.status_code == 200, raw.text
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, vectors[0])
    assert raw.headers["x-ratelimit-remaining-tokens"] == "1000"
    assert accounts.settled == [("sk-a", 10, 0, "ok"), ("sk-a", 10, 0, "ok"), ("sk-a", 3, 0, "ok")]


def test_token_arrays_and_the_loaded_model(server, sdk):
    client = sdk(server, api_key="sk-b")
    one = client.embeddings.create(model="scripted-model", input=[5, 6, 7])
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    many = client.embeddings.create(model="scripted-model", input=[[5, 6, 7], [9]])
    assert len(many.data) == 2 and many.data[0].embedding == one.data[0].embedding
    assert many.usage.prompt_tokens == 4
    # "model": "" means the loaded model
    assert client.embeddings.create(model="", input="x").model == "scripted-model"


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": "plain-model", "input": "x"}, 400, "model", "model_not_supported"),
    ({"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    ({"model": "scripted-model", "input": "x", "dimensions": 8}, 400, "dimensions", "unsupported_parameter"),
    ({"model": "scripted-model", "input": ""}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": ["a", ""]}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": []}, 400, "input", "invalid_value"),
    ({"model": "scripted-model"}, 400, "input", "missing_required_parameter"),
    ({"model": "scripted-model", "input": 3}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": [[70000]]}, 400, "input", None),
    ({"model": "scripted-model", "input": [[-1]]}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": [[]]}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": ["a"] * 2049}, 400, "input", "invalid_value"),
    ({"model": "scripted-model", "input": "x", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
    ({"model": "scripted-model", "input": "x", "bogus": 1}, 400, "bogus", "unknown_parameter"),
])
def test_refusals_are_openai_errors(server, accounts, body, status, param, code):
    r = httpx.post(server.base_url + "/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-a"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    if code is not None:
        assert error["code"] == code
    if body.get("model") == "plain-model":
        assert "plain-model" in error["message"]
    assert accounts.settled == []  # nothing reserved, nothing counted


def test_bad_key_is_401(server, sdk):
    with pytest.raises(openai.AuthenticationError):
        sdk(server, api_key="sk-nope").embeddings.create(model="scripted-model", input="x")


def test_usage_lands_in_the_real_limits_ledger(serve, sdk):
    limits = pytest.importorskip("adyton_limits")
    tier = {"requests_per_minute": 1000, "tokens_per_minute": 10, "requests_per_day": 1000,
            "tokens_per_day": 1000, "concurrent_requests": 10}
    server = serve(ScriptedBackend(embedding_dimensions=8), plugins=[limits.LimitsPlugin()],
                   settings={"limits": {"upgrade": {"enabled": False}, "tiers": {1: tier}}})
    service = limits.service_for(server.app.extensions["adyton"])
    service.open_store()
    account = service.store.create_account(1, "embedder")
    client = sdk(server, api_key=account.api_key)
    r = client.embeddings.create(model="scripted-model", input=["one two three", "four five six"])
    assert r.usage.prompt_tokens == 6
    with pytest.raises(openai.RateLimitError):  # 6 + 6 > 10 tokens per minute
        client.embeddings.create(model="scripted-model", input=["one two three", "four five six"])
    rows = service.store.ledger(account.account.id)
    assert [(row["prompt_tokens"], row["completion_tokens"], row["outcome"], row["wire_format"])
            for row in rows] == [(6, 0, "ok", "openai")]
