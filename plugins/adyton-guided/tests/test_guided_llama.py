"""End to end with the real default model (SmolLM2-135M-Instruct via
adyton-llama): 20 generations per schema, regex, grammar, choice,
json_object, the policy and /sampling/generate surfaces, refusals without
quota, truncation with and without repair. One server for the module; the
model is ADYTON_TEST_MODEL, offered to adyton-llama through its
``[llama] models_dir`` setting (a directory with a symlink to the file,
``adyton.testing.link_model``).

Every constraint here bounds the output's length, or asks for repair, so
"every output validates" is a property of the enforcement, not of what this
weak model happens to write within max_tokens."""

from __future__ import annotations

import contextlib
import json
import re

import httpx
import jsonschema
import pytest
from guided_helpers import SCHEMAS, CountingLimiter, GWirePlugin, LimiterPlugin

import adyton_guided
from adyton import create_app
from adyton.testing import ServerThread, link_model

adyton_llama = pytest.importorskip("adyton_llama",
                                   reason="adyton-llama is not installed (needed for ADYTON_TEST_MODEL)")
pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

PROMPTS = {
    "nested": "Describe a user (name, age) and whether the account is active, as JSON.",
    "array": "Give a JSON object with a few short tags about cooking.",
    "enum": "Pick a color and a T-shirt size, as JSON.",
    "bounds": "Give two numbers as JSON fields n and m.",
    "pattern": "Give a US zip code and a product code like ABC-12, as JSON.",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    models = link_model(tmp_path_factory.mktemp("models"))
    limiter = CountingLimiter()
    app = create_app(settings={"home": str(home), "llama": {"models_dir": str(models)}},
                     plugins=[adyton_guided, adyton_llama, GWirePlugin(), LimiterPlugin(limiter)],
                     load_entrypoints=False)
    assert app.extensions["adyton"].list_models(), f"adyton-llama lists no model in {models}"
    srv = ServerThread(app).start()
    client = httpx.Client(base_url=srv.base_url, timeout=600)
    client.limiter = limiter  # type: ignore[attr-defined]
    yield client
    with contextlib.suppress(Exception):
        srv.stop()


def chat(content, constraint, **kw):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 120, "temperature": 0.8,
            "constraints": [constraint]}
    body.update(kw)
    return body


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_20_generations_per_schema_validate(server, name):
    schema = SCHEMAS[name]
    texts = []
    for seed in (1, 2):
        r = server.post("/g/generate", json=chat(PROMPTS[name], {"kind": "json_schema", "value": schema},
                                                 n=10, seed=seed * 100))
        assert r.status_code == 200, r.text
        assert r.headers["x-adyton-guided"] == "enforced"
        for choice in r.json()["choices"]:
            value = json.loads(choice["text"])
            jsonschema.validate(value, schema)
            assert choice["reports"]["guided"]["accepted"] is True
            texts.append(choice["text"])
    assert len(texts) == 20


@pytest.mark.parametrize("constraint, check", [
    ({"kind": "regex", "value": r"\d{3}-\d{3}-\d{4}"},
     lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{3}-[0-9]{4}", t)),
    ({"kind": "regex", "value": r"(Yes|No), because [a-z ]{5,40}\."},
     lambda t: re.fullmatch(r"(Yes|No), because [a-z ]{5,40}\.", t)),
    ({"kind": "grammar", "syntax": "gbnf",
      "value": 'root ::= item ("," item){2}\nitem ::= [a-z]{1,10}'},
     lambda t: re.fullmatch(r"[a-z]{1,10}(,[a-z]{1,10}){2}", t)),
    ({"kind": "choice", "value": ["positive", "negative", "neutral"]},
     lambda t: t in ("positive", "negative", "neutral")),
    # any object is unbounded: repair closes it within max_tokens + budget
    ({"kind": "json_object", "options": {"repair_on_failure": True, "repair_budget": 32}},
     lambda t: isinstance(json.loads(t), dict)),
])
def test_other_constraints(server, constraint, check):
    r = server.post("/g/generate", json=chat("Answer briefly: is the sky blue? Give a phone number too.",
                                             constraint, n=5, seed=3, max_tokens=60))
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert check(choice["text"]), choice
        assert choice["reports"]["guided"]["accepted"] is True


def test_sampling_generate_and_policies(server):
    schema = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 40},
                                               "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
              "required": ["topic", "confidence"], "additionalProperties": False}
    r = server.post("/sampling/generate", json={
        "prompt": "Extract the primary topic and confidence from: relayer outage on Osmosis, confidence 0.82\nJSON:",
        "method": "guided-generation", "max_new_tokens": 48, "params": {"temperature": 0.2, "seed": 1},
        # a number's digits are unbounded: repair guarantees a finished document
        "json_schema": schema, "repair_on_failure": True}, headers={"x-api-key": "ax_test"})
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(json.loads(body["output"]), schema)
    assert body["accepted"] is True and body["verification"]["verifiers"]["json_schema"]["passed"] is True
    r = server.post("/v1/policies", json={
        "sampling": {"method": "guided-generation", "temperature": 0.2, "top_p": 0.9},
        "constraints": {"json_mode": True, "json_schema": schema},
        "verifiers": {"enabled": ["syntax", "json_schema"], "repair_on_failure": True}})
    assert r.status_code == 201, r.text
    pid = r.json()["policy_id"]
    r = server.post("/g/generate", json={"messages": [{"role": "user", "content": "Relayer outage, 0.82"}],
                                         "max_tokens": 48, "seed": 1, "extra": {"policy_id": pid}})
    assert r.status_code == 200, r.text
    assert r.headers["x-adyton-guided"] == "enforced"
    choice = r.json()["choices"][0]
    jsonschema.validate(json.loads(choice["text"]), schema)
    assert choice["reports"]["guided"]["source"] == "policy_id"
    assert choice["reports"]["guided"]["accepted"] is True


@pytest.mark.parametrize("constraint", [
    {"kind": "json_schema", "value": {"type": "object", "properties": {"a": {"type": "nope"}}}},
    {"kind": "json_schema", "value": {"type": "array", "uniqueItems": True}},
    {"kind": "regex", "value": "(unclosed"},
])
def test_refusals_use_no_quota(server, constraint):
    before = server.limiter.reserved
    r = server.post("/g/generate", json=chat("hi", constraint))
    assert r.status_code == 400 and r.json()["err"]["code"] == "unsupported_constraint"
    assert server.limiter.reserved == before


def test_truncation_with_and_without_repair(server):
    # the story alone needs more than the 12 tokens max_tokens allows
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 40},
                                               "moral": {"type": "string", "maxLength": 60}},
              "required": ["story", "moral"], "additionalProperties": False}
    prompt = "Write a long story with a moral, as JSON."
    r = server.post("/g/generate", json=chat(prompt, {"kind": "json_schema", "value": schema},
                                             max_tokens=12, seed=5))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["reports"]["guided"]["accepted"] is False
    r = server.post("/g/generate", json=chat(prompt, {"kind": "json_schema", "value": schema,
                                                      "options": {"repair_on_failure": True, "repair_budget": 48}},
                                             max_tokens=12, seed=5))
    choice = r.json()["choices"][0]
    jsonschema.validate(json.loads(choice["text"]), schema)
    assert choice["reports"]["guided"]["accepted"] is True
    assert choice["reports"]["guided"]["repair"]["used"] is True
