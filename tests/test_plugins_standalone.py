"""Each first-party plugin installs and works alone: a fresh virtualenv gets
only the kernel and that one plugin (with their declared dependencies, from
the package index), and a served app answers with it loaded.

Slow (one venv per plugin, built in parallel); part of `make test`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from adyton.testing import free_port, link_model

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["llama", "openai", "axiom", "limits", "guided", "web"]

pytestmark = pytest.mark.slow


def _make_venv(base: Path, kernel_wheel: Path, plugin: str) -> Path:
    venv = base / f"venv-{plugin}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(kernel_wheel), str(ROOT / "plugins" / f"adyton-{plugin}")],
        capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"installing adyton + adyton-{plugin} alone failed:\n{result.stderr[-3000:]}")
    return venv


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    base = tmp_path_factory.mktemp("standalone")
    # the kernel is built once: parallel builds of one source tree collide
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "wheels"), str(ROOT)],
                   check=True, capture_output=True)
    [kernel_wheel] = (base / "wheels").glob("adyton-*.whl")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(PLUGINS)) as pool:
        futures = {p: pool.submit(_make_venv, base, kernel_wheel, p) for p in PLUGINS}
        return {p: f.result() for p, f in futures.items()}


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADYTON_") and k != "PYTHONPATH"}
    env["ADYTON_HOME"] = str(home)
    return env


def _serve(venv: Path, home: Path):
    port = free_port()
    proc = subprocess.Popen([str(venv / "bin" / "adyton"), "serve", "--port", str(port)], env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.stdout.read())


def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_alone(venvs, plugin, tmp_path):
    venv = venvs[plugin]
    home = tmp_path / "home"
    if plugin == "llama":
        link_model(home / "models")  # the default models_dir, $ADYTON_HOME/models
    listed = subprocess.run([str(venv / "bin" / "adyton"), "plugins", "--json"], env=_env(home),
                            capture_output=True, text=True, check=True)
    names = [p["name"] for p in json.loads(listed.stdout)]
    assert names == [plugin, "sampler", "kernel_routes"]

    proc, base = _serve(venv, home)
    try:
        if plugin == "llama":
            health = httpx.get(base + "/health").json()
            assert health["loaded_models"] == ["smollm2-135m-instruct"]
        elif plugin == "openai":
            assert httpx.get(base + "/v1/models").json() == {"object": "list", "data": []}
            r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        elif plugin == "axiom":
            r = httpx.post(base + "/api/chat", json={"model": "m", "sessionId": "1" * 64,
                                                      "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 404 and "error" in r.json()
        elif plugin == "limits":
            r = httpx.get(base + "/admin/accounts")
            assert r.status_code == 401
        elif plugin == "guided":
            r = httpx.post(base + "/sampling/generate", json={"prompt": "x", "method": "guided-generation",
                                                              "regex_pattern": "[0-9]+"})
            assert r.status_code in (404, 503), r.text  # no backend installed: refused cleanly
        elif plugin == "web":  # the console's files are in the wheel (package data)
            page = httpx.get(base + "/ui/")
            assert page.status_code == 200 and 'src="js/main.js"' in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert httpx.get(base + "/ui/js/operator.js").status_code == 200
        headers = {}
        if plugin == "limits":  # with an auth plugin, /-/plugins needs the admin key ([access] server_info)
            assert httpx.get(base + "/-/plugins").status_code == 401
            headers = {"Authorization": "Bearer " + (home / "limits" / "admin.key").read_text().strip()}
        assert httpx.get(base + "/-/plugins", headers=headers).json()["plugins"][0]["name"] == plugin
    finally:
        _stop(proc)
