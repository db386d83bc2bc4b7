"""adyton-steer with adyton-limits, the real accounts plugin: vectors belong
to accounts, admin routes need the admin key, and SAE-monitored generation
is counted in the account's usage."""

from __future__ import annotations

import json
import time

import httpx
import pytest

import adyton_limits
import adyton_llamacpp
import adyton_steer
from adyton import create_app
from adyton.testing import ServerThread, require_model

MODEL = "smollm2-135m-instruct"
PAIRS = {"model": MODEL, "positive": ["A lovely, happy day."], "negative": ["An awful, sad day."],
         "layers": [10]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models, home = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("home")
    model = require_model()
    (models / model.name).symlink_to(model.resolve())
    app = create_app(settings={"home": str(home), "log_level": "warning",
                               "llamacpp": {"models_dir": str(models), "threads": 1, "slots": 2}},
                     plugins=[adyton_llamacpp, adyton_limits, adyton_steer], load_entrypoints=False)
    kernel = app.extensions["adyton"]
    service = adyton_limits.service_for(kernel)
    service.open_store()
    a, b = service.store.create_account(1, "a"), service.store.create_account(1, "b")
    server = ServerThread(app).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and httpx.get(server.base_url + "/health").status_code != 200:
        time.sleep(0.05)
    admin = service.admin_key_path.read_text().strip()
    yield server, {"x-api-key": a.api_key}, {"x-api-key": b.api_key}, {"x-api-key": admin}, service, a
    server.stop()


def test_vectors_belong_to_accounts(served):
    srv, a, b, admin, _, _ = served
    r = httpx.post(srv.base_url + "/v1/steering_vectors", json=PAIRS, headers=a, timeout=120)
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    assert httpx.get(srv.base_url + f"/v1/steering_vectors/{vid}", headers=a).status_code == 200
    assert httpx.get(srv.base_url + f"/v1/steering_vectors/{vid}", headers=b).status_code == 404
    assert httpx.get(srv.base_url + "/v1/steering_vectors", headers={}).status_code == 401
    assert httpx.get(srv.base_url + "/v1/steering_vectors", headers={"x-api-key": "sk-nope"}).status_code == 401
    share = srv.base_url + f"/v1/steering_vectors/{vid}/share"
    assert httpx.post(share, json={"shared": True}).status_code == 401
    assert httpx.post(share, json={"shared": True}, headers=a).status_code == 403
    assert httpx.post(share, json={"shared": True}, headers=admin).status_code == 200
    assert httpx.get(srv.base_url + f"/v1/steering_vectors/{vid}", headers=b).status_code == 200


def test_admin_routes_and_counted_usage(served):
    srv, a, _, admin, _service, _account = served
    probe = {"name": "P", "model": MODEL, "layer": 5, "probe": {"vector": [0.01] * 576, "threshold": 0}}
    assert httpx.post(srv.base_url + "/sae/behaviors", json=probe).status_code == 401
    assert httpx.post(srv.base_url + "/sae/behaviors", json=probe, headers=a).status_code == 403
    assert httpx.post(srv.base_url + "/sae/behaviors", json=probe, headers=admin).status_code == 201
    assert httpx.delete(srv.base_url + "/sae/behaviors/P", headers=a).status_code == 403
    before = httpx.get(srv.base_url + "/v1/account", headers=a).json()["today"]
    with httpx.stream("POST", srv.base_url + "/sae/generate", headers=a, timeout=120,
                      json={"model": MODEL, "prompt": "Hello", "max_new_tokens": 5, "behavior_names": ["P"],
                            "params": {"temperature": 0}}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    summary = json.loads(events[-1][len("data: "):])
    assert summary["type"] == "summary"
    after = httpx.get(srv.base_url + "/v1/account", headers=a).json()["today"]
    assert after["requests"] == before["requests"] + 1
    assert after["completion_tokens"] - before["completion_tokens"] == summary["usage"]["completion_tokens"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == summary["usage"]["prompt_tokens"]
