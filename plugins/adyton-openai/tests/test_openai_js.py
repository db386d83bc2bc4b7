"""The official OpenAI JavaScript SDK (npm package ``openai``), run with the
machine's node: chat, streaming with usage, and an error."""

from __future__ import annotations

import json
import os
import subprocess

from openai_helpers import JS_DIR


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
