"""adyton in front of another adyton serving the real default model
(SmolLM2-135M-Instruct via adyton-llama, with adyton-guided), driven by the
official openai SDK: greedy text and usage through the proxy equal the
upstream's own, streaming passes each token through, and a json_schema
request is enforced upstream and verified here."""

from __future__ import annotations

import contextlib
import json

import openai
import pytest

import adyton_openai
import adyton_upstream
from adyton import create_app
from adyton.testing import ServerThread, link_model

adyton_llama = pytest.importorskip("adyton_llama", reason="adyton-llama is not installed")
adyton_guided = pytest.importorskip("adyton_guided", reason="adyton-guided is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

USER = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    models = link_model(tmp_path_factory.mktemp("models"))
    engine = create_app(settings={"home": str(tmp_path_factory.mktemp("engine")), "llama": {"models_dir": str(models)}},
                        plugins=[adyton_openai, adyton_llama, adyton_guided], load_entrypoints=False)
    model_id = next(info.id for _, info in engine.extensions["adyton"].list_models())
    upstream = ServerThread(engine).start()
    proxy_app = create_app(
        settings={"home": str(tmp_path_factory.mktemp("proxy")),
                  "upstream": {"models": {"smol": {"replicas": [upstream.base_url], "upstream_model": model_id}}}},
        plugins=[adyton_openai, adyton_upstream], load_entrypoints=False)
    proxy = ServerThread(proxy_app).start()
    try:
        yield model_id, upstream.base_url, proxy.base_url
    finally:
        for server in (proxy, upstream):
            with contextlib.suppress(Exception):
                server.stop()


def _client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


def test_greedy_text_and_usage_through_the_proxy_equal_the_upstream(servers):
    model_id, upstream, proxy = servers
    direct = _client(upstream).chat.completions.create(model=model_id, messages=USER, temperature=0, max_tokens=8)
    through = _client(proxy).chat.completions.create(model="smol", messages=USER, temperature=0, max_tokens=8)
    assert through.choices[0].message.content == direct.choices[0].message.content
    assert through.choices[0].finish_reason == direct.choices[0].finish_reason
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    assert through.usage.completion_tokens == direct.usage.completion_tokens


def test_streaming_passes_every_token_through(servers):
    model_id, upstream, proxy = servers
    kw = {"messages": USER, "temperature": 0, "max_tokens": 6, "stream": True,
          "stream_options": {"include_usage": True}}
    direct = list(_client(upstream).chat.completions.create(model=model_id, **kw))
    through = list(_client(proxy).chat.completions.create(model="smol", **kw))

    def deltas(chunks):
        return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

    assert deltas(through) == deltas(direct)
    assert through[-1].usage.completion_tokens == direct[-1].usage.completion_tokens == 6


def test_json_schema_is_enforced_upstream_and_verified_here(servers):
    _, _, proxy = servers
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 12}},
              "required": ["capital"], "additionalProperties": False}
    r = _client(proxy).chat.completions.create(
        model="smol", messages=USER, temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"capital"} and isinstance(value["capital"], str)
