"""Read-only routes while an auth plugin is installed (issue 15, item 8):
``[access]`` decides what credentials each needs, the kernel asks the
authenticators (``Authenticator.authorize``) and knows nothing of accounts.
Defaults: model lists need a user's key, ``/-/plugins`` and ``/-/models``
(which show file paths) the admin key, ``/metrics`` the admin key or a
metrics-only token; ``/health`` stays open. Refusals are in each surface's
own error shape. Without an auth plugin, everything stays open."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from faults_helpers import kernel_of, limits_app, new_account, serving

import adyton_axiom
import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend
from adyton_limits import service_for

MODELS = ["/v1/models", "/v1/models/scripted-model", "/api/models"]
SERVER_INFO = ["/-/plugins", "/-/models"]
METRICS = ["/metrics"]
METRICS_TOKEN = "mtk-" + "m" * 40


def _error(r: httpx.Response) -> tuple[str, str]:
    """(code, message) in whichever shape the surface uses."""
    body = r.json()
    if isinstance(body.get("error"), dict):  # OpenAI and the kernel's own routes
        return body["error"]["code"], body["error"]["message"]
    return body["code"], body["error"]  # Axiom


@pytest.fixture
def served(tmp_path):
    token_file = tmp_path / "metrics.token"
    token_file.write_text(METRICS_TOKEN + "\n")
    app = limits_app(tmp_path / "home", ScriptedBackend(), limits={"metrics_token_file": str(token_file)})
    acct = new_account(app)
    with serving(app) as server:
        admin = service_for(kernel_of(app)).admin_key_path.read_text().strip()
        yield server.base_url, acct, admin


def test_default_access_levels(served):
    base, acct, admin = served
    def get(path, key=None, header="Authorization"):
        headers = {header: f"Bearer {key}" if header == "Authorization" else key} if key else {}
        return httpx.get(base + path, timeout=10, headers=headers)
    assert get("/health").status_code == 200

    for path in MODELS + SERVER_INFO + METRICS:  # no credentials: 401, in the surface's shape
        r = get(path)
        assert r.status_code == 401, (path, r.text)
        code, _message = _error(r)
        assert code in ("missing_api_key", "unknown_session_id"), (path, code)
        assert "/home/" not in r.text and str(Path.home()) not in r.text

    for path in MODELS:  # an account's key (Bearer or x-api-key), or its number as a key
        assert get(path, acct.api_key).status_code == 200, path
        assert get(path, acct.api_key, header="x-api-key").status_code == 200, path
        assert get(path, acct.account_number).status_code == 200, path
        r = get(path, "sk-" + "x" * 30)
        assert r.status_code == 401, path
    for path in SERVER_INFO + METRICS:  # ...but not the server's internals
        r = get(path, acct.api_key)
        assert r.status_code == 403, (path, r.text)
        assert _error(r)[0] == "insufficient_access"
        assert "models_dir" not in r.text and "/" not in _error(r)[1].split("(")[0]

    for path in MODELS + SERVER_INFO + METRICS:  # the admin key opens everything
        assert get(path, admin).status_code == 200, path
    assert "adyton_queue_waiting" in get("/metrics", admin).text

    # the metrics token: /metrics only
    assert get("/metrics", METRICS_TOKEN).status_code == 200
    for path in MODELS + SERVER_INFO:
        assert get(path, METRICS_TOKEN).status_code in (401, 403), path


def test_admin_401_does_not_say_where_the_key_file_is(served):
    base, _, _ = served
    r = httpx.get(base + "/admin/accounts", timeout=10)
    assert r.status_code == 401
    code, message = _error(r)
    assert code == "missing_admin_key" and "admin key" in message
    assert "admin.key" not in r.text and "/limits" not in r.text


def test_access_is_a_setting(tmp_path):
    app = limits_app(tmp_path / "home", ScriptedBackend(),
                     settings={"access": {"models": "public", "metrics": "public", "server_info": "user"}})
    acct = new_account(app)
    with serving(app) as server:
        for path in MODELS + METRICS:
            assert httpx.get(server.base_url + path, timeout=10).status_code == 200, path
        for path in SERVER_INFO:
            assert httpx.get(server.base_url + path, timeout=10).status_code == 401, path
            assert httpx.get(server.base_url + path, timeout=10,
                             headers={"x-api-key": acct.api_key}).status_code == 200, path


def test_without_an_auth_plugin_everything_is_open(tmp_path):
    app = create_app(settings={"home": str(tmp_path / "home")}, load_entrypoints=False,
                     plugins=[adyton_openai, adyton_axiom, BackendPlugin(ScriptedBackend())])
    with serving(app) as server:
        for path in MODELS + SERVER_INFO + METRICS:
            assert httpx.get(server.base_url + path, timeout=10).status_code == 200, path
