"""The official OpenAI JavaScript SDK (npm package ``openai``), run with the
machine's node: chat, streaming with usage, and an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from openai_fixtures import serve, server  # noqa: F401 - fixtures

JS_DIR = Path(__file__).parent / "js"


def _installed() -> bool:
    """Every dependency of package.json is in node_modules."""
    deps = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    return all((JS_DIR / "node_modules" / name).is_dir() for name in deps)


def _node_ready() -> bool:
    node = shutil.which("node")
    if node is None:
        return False
    if _installed():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    # install exactly what package-lock.json pins (node_modules is not committed)
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=300)
    return result.returncode == 0 and _installed()


@pytest.fixture(scope="module")
def node_sdk():
    if not _node_ready():
        pytest.skip("node, npm or the npm packages of tests/js are not available")
    return shutil.which("node")


def test_js_sdk(server, node_sdk):
    env = dict(os.environ, ADYTON_BASE_URL=server.base_url)
    result = subprocess.run([node_sdk, "sdk_check.mjs"], cwd=JS_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["chat"]["object"] == "chat.completion"
    assert out["chat"]["content"] == "Hello, world!"
    assert out["chat"]["finish_reason"] == "stop"
    assert out["chat"]["usage"]["completion_tokens"] == 4
    assert out["stream"]["text"] == "Hello, world!"
    assert out["stream"]["finish_reason"] == "stop"
    assert out["stream"]["usage"]["completion_tokens"] == 4
    assert out["error"] == {"raised": True, "notFound": True, "status": 404,
                            "code": "model_not_found", "type": "invalid_request_error"}
    assert out["models"] == ["scripted-model"]
