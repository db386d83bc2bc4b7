"""The Vercel AI SDK (npm ``ai`` + ``@ai-sdk/openai``, AI SDK 5: the newest
major that runs on this machine's node 20) with node: its default OpenAI
model speaks /v1/responses — text, a stream, a function tool call — and its
embedding model /v1/embeddings (``tests/js/ai_sdk_check.mjs``)."""

from __future__ import annotations

import json
import os
import subprocess

from openai_helpers import JS_DIR, Accounts

from adyton.testing import ScriptedBackend

CALL = ["<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "</tool_call>"]


def _run(node, server, mode):
    result = subprocess.run([node, "ai_sdk_check.mjs", mode], cwd=JS_DIR,
                            env=dict(os.environ, ADYTON_BASE_URL=server.base_url),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ai_sdk_text_stream_and_embeddings(serve, node_sdk):
    out = _run(node_sdk, serve(ScriptedBackend(embedding_dimensions=8), plugins=[Accounts()]), "text")
    assert out["text"]["text"] == "Hello, world!" and out["text"]["finishReason"] == "stop"
    assert out["text"]["id"].startswith("resp_")  # it went through /v1/responses
    assert out["text"]["usage"]["outputTokens"] == 4
    assert out["stream"]["text"] == "Hello, world!" and out["stream"]["finishReason"] == "stop"
    assert out["stream"]["usage"]["outputTokens"] == 4
    assert out["embed"] == {"n": 3, "dims": 8, "same": True, "differ": True, "tokens": 6}


def test_ai_sdk_tool_call(serve, node_sdk):
    out = _run(node_sdk, serve(ScriptedBackend(["Let me check.", *CALL]), plugins=[Accounts()]), "tools")
    tools = out["tools"]
    assert tools["finishReason"] == "tool-calls" and tools["text"] == "Let me check."
    (call,) = tools["calls"]
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris"}
    assert call["id"].startswith("call_")
