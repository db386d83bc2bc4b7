"""Axionic policies (inline and saved) and POST /sampling/generate, with the
scripted backend."""

from __future__ import annotations

import json
import sqlite3

import pytest
from guided_helpers import JSON_VOCAB

from adyton.testing import ScriptedBackend

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}
SCRIPT = ['{', '"', 'a', '"', ': ', '4', '2', '}']


async def call(app, method, path, body=None, headers=None):
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await getattr(client, method)(path, json=body, headers=headers or {})
        return response.status_code, await response.get_json(), response.headers


def policy(**constraints):
    return {
        "sampling": {"method": "guided-generation", "temperature": 0.0, "top_p": 0.9},
        "constraints": constraints,
        "verifiers": {"enabled": ["syntax", "json_schema"], "repair_on_failure": True},
    }


async def test_inline_policy_through_request_extra(make_app, tmp_path):
    backend = ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB)
    app = make_app(backend)
    status, body, headers = await call(app, "post", "/g/generate", {
        "prompt": "p", "max_tokens": 20, "extra": {"policy": policy(json_mode=True, json_schema=SCHEMA)}})
    assert status == 200, body
    choice = body["choices"][0]
    assert json.loads(choice["text"]) == {"a": 42}
    report = choice["reports"]["guided"]
    assert report["accepted"] and report["source"] == "policy"
    assert set(report["verifiers"]) == {"syntax", "json_schema"}
    assert headers["x-adyton-guided"] == "enforced"


@pytest.mark.parametrize("bad, needle", [
    ({"sampling": {"method": "beam-search"}}, "policy.sampling.method"),
    ({"steering": {}}, "unsupported field 'policy.steering'"),
    ({"constraints": {"regex_pattern": "a", "grammar": "start: \"a\""}}, "one constraint"),
    ({"constraints": {"json_mode": True, "regex_pattern": "a"}}, "json_mode"),
    ({"sampling": {"method": "guided-generation"}}, "no constraint"),
    ({"sampling": {"method": "standard"}, "constraints": {"json_mode": True}}, "standard"),
    ({"verifiers": {"enabled": ["vibes"]}}, "policy.verifiers.enabled"),
])
async def test_bad_inline_policies(make_app, limiter, bad, needle):
    app = make_app()
    status, body, _ = await call(app, "post", "/g/generate", {"prompt": "p", "extra": {"policy": bad}})
    assert status == 400, body
    assert needle in body["err"]["message"]
    assert limiter.reserved == 0


async def test_policy_with_uncompilable_schema_is_refused(make_app, limiter):
    app = make_app()
    status, body, _ = await call(app, "post", "/g/generate", {
        "prompt": "p", "extra": {"policy": policy(json_schema={"type": "array", "uniqueItems": True})}})
    assert status == 400 and "uniqueItems" in body["err"]["message"]
    assert limiter.reserved == 0


async def test_saved_policies_crud_and_use(make_app, tmp_path):
    app = make_app(ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/v1/policies", json={"name": "extract", **policy(json_schema=SCHEMA)})
        assert r.status_code == 201, await r.get_json()
        created = await r.get_json()
        pid = created["policy_id"]
        assert pid.startswith("pol_") and created["policy"]["name"] == "extract"
        # a row of the kernel's database (default: SQLite in $ADYTON_HOME)
        with sqlite3.connect(tmp_path / "home" / "adyton.sqlite3") as conn:
            assert conn.execute("SELECT owner FROM guided_policies WHERE id = ?", (pid,)).fetchone() is not None

        r = await client.get(f"/v1/policies/{pid}")
        assert (await r.get_json())["policy"]["constraints"]["json_schema"] == SCHEMA
        r = await client.get("/v1/policies")
        assert [p["id"] for p in (await r.get_json())["data"]] == [pid]

        r = await client.post("/g/generate", json={"prompt": "p", "max_tokens": 20,
                                                   "extra": {"policy_id": pid}})
        out = await r.get_json()
        assert r.status_code == 200, out
        assert json.loads(out["choices"][0]["text"]) == {"a": 42}
        assert out["choices"][0]["reports"]["guided"]["source"] == "policy_id"

        r = await client.post("/sampling/generate", json={"prompt": "p", "policy_id": pid, "max_new_tokens": 20})
        out = await r.get_json()
        assert r.status_code == 200, out
        assert out["accepted"] is True

        r = await client.delete(f"/v1/policies/{pid}")
        assert (await r.get_json())["deleted"] is True
        r = await client.get(f"/v1/policies/{pid}")
        assert r.status_code == 404
        body = await r.get_json()
        assert body["error"]["code"] == "policy_not_found" and "detail" in body
        r = await client.post("/g/generate", json={"prompt": "p", "extra": {"policy_id": pid}})
        assert r.status_code == 404


async def test_saving_a_broken_policy_is_refused(make_app, tmp_path):
    app = make_app()
    status, body, _ = await call(app, "post", "/v1/policies", policy(regex_pattern="(unclosed"))
    assert status == 400 and body["error"]["code"] == "unsupported_constraint"
    status, body, _ = await call(app, "post", "/v1/policies", {"policy": {"bogus": 1}})
    assert status == 400 and "bogus" in body["detail"]
    with sqlite3.connect(tmp_path / "home" / "adyton.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM guided_policies").fetchone()[0] == 0


async def test_policy_files_of_earlier_releases_are_imported_once(make_app, tmp_path):
    """Earlier releases kept each saved policy as <home>/policies/<id>.json:
    the first start imports them into the database; a policy deleted later
    stays deleted after a restart."""
    old = tmp_path / "home" / "policies"
    old.mkdir(parents=True)
    pid, other = "pol_" + "a1" * 12, "pol_" + "b2" * 12
    for policy_id, owner in ((pid, "anonymous"), (other, "someone-else")):
        (old / f"{policy_id}.json").write_text(json.dumps({
            "id": policy_id, "object": "policy", "created": 1700000000, "owner": owner,
            "policy": {"name": "old", **policy(json_schema=SCHEMA)}}))
    (old / "pol_broken0000.json").write_text("{not json")
    app = make_app(ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB))
    status, body, _ = await call(app, "get", "/v1/policies")
    assert status == 200, body
    assert [(p["id"], p["created"], p["policy"]["name"]) for p in body["data"]] == [(pid, 1700000000, "old")]
    status, body, _ = await call(app, "post", "/g/generate", {"prompt": "p", "max_tokens": 20,
                                                             "extra": {"policy_id": pid}})
    assert status == 200, body
    assert json.loads(body["choices"][0]["text"]) == {"a": 42}
    assert not old.exists() and (tmp_path / "home" / "policies.imported" / f"{pid}.json").exists()
    status, body, _ = await call(app, "delete", f"/v1/policies/{pid}")
    assert status == 200 and body["deleted"] is True
    # a restarted server: the deleted policy does not come back from the files
    status, body, _ = await call(make_app(), "get", f"/v1/policies/{pid}")
    assert status == 404


async def test_sampling_generate_json_schema(make_app):
    app = make_app(ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB))
    status, body, headers = await call(app, "post", "/sampling/generate", {
        "prompt": "Extract", "method": "guided-generation", "max_new_tokens": 20,
        "params": {"temperature": 0.2}, "json_schema": SCHEMA}, headers={"x-api-key": "k"})
    assert status == 200, body
    assert body["output"] == '{"a": 42}' and body["accepted"] is True
    assert body["verification"]["verifiers"]["json_schema"]["passed"] is True
    assert body["finish_reason"] == "stop" and body["method"] == "guided-generation"
    assert headers["x-adyton-guided"] == "enforced"


@pytest.mark.parametrize("extra, check", [
    ({"regex_pattern": "[0-9]{2}"}, lambda t: len(t) == 2 and t.isdigit()),
    ({"grammar": 'root ::= "yes" | "no"'}, lambda t: t in ("yes", "no")),
    ({"grammar": 'start: "a" "b"', "grammar_syntax": "lark"}, lambda t: t == "ab"),
    ({"choices": ["yes", "no"]}, lambda t: t in ("yes", "no")),
    ({"json_mode": True}, lambda t: isinstance(json.loads(t), dict)),
])
async def test_sampling_generate_other_constraints(make_app, extra, check):
    app = make_app(ScriptedBackend(SCRIPT, extra_vocab=JSON_VOCAB))
    status, body, _ = await call(app, "post", "/sampling/generate", {
        "prompt": "p", "method": "guided-generation", "max_new_tokens": 20, **extra})
    assert status == 200, body
    assert check(body["output"]), body
    assert body["accepted"] is True


@pytest.mark.parametrize("bad, status_code, needle", [
    ({"prompt": "p", "method": "beam"}, 400, "unsupported method"),
    ({"prompt": "p", "method": "guided-generation"}, 400, "no constraint"),
    ({"prompt": "p", "json_schema": {"type": "object", "properties": {"a": {"type": 5}}}}, 400, "invalid JSON schema"),
    ({"prompt": "p", "regex_pattern": "a[", "params": {"temperature": 0}}, 400, "unclosed"),
    ({"prompt": "p", "regex_pattern": "a", "params": {"frobnicate": 1}}, 400, "params.frobnicate"),
    ({"prompt": "p", "regex_pattern": "a", "wat": 1}, 400, "'wat'"),
    ({"method": "guided-generation", "regex_pattern": "a"}, 400, "prompt"),
    ({"prompt": "p", "regex_pattern": "a", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ({"prompt": "p", "regex_pattern": "a", "policy_id": "pol_x"}, 400, "not both"),
])
async def test_sampling_generate_refusals(make_app, limiter, bad, status_code, needle):
    app = make_app()
    status, body, _ = await call(app, "post", "/sampling/generate", bad)
    assert status == status_code, body
    assert needle in body["detail"], body
    assert body["error"]["message"] == body["detail"]
    assert limiter.reserved == 0


async def test_sampling_generate_truncation_and_repair(make_app):
    script = ['{', '"', 'a', '"', ': ', '"'] + ['hello'] * 30
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    app = make_app(ScriptedBackend(script, extra_vocab=JSON_VOCAB))
    _, cut, _ = await call(app, "post", "/sampling/generate", {
        "prompt": "p", "max_new_tokens": 8, "json_schema": schema})
    assert cut["finish_reason"] == "length" and cut["accepted"] is False
    _, fixed, _ = await call(app, "post", "/sampling/generate", {
        "prompt": "p", "max_new_tokens": 8, "json_schema": schema,
        "verifiers": {"repair_on_failure": True, "max_repair_tokens": 8}})
    assert fixed["accepted"] is True and fixed["finish_reason"] == "stop"
    assert json.loads(fixed["output"])["a"].startswith("hello")
