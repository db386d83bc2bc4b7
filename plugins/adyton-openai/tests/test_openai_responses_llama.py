"""/v1/responses and /v1/embeddings over the real default model
(SmolLM2-135M-Instruct via adyton-llama, adyton-guided for structured output),
driven by the real client libraries against one hypercorn server per module:
the official openai SDK, the OpenAI Agents SDK (its default model class calls
/v1/responses), litellm and langchain-openai's ``OpenAIEmbeddings``.

Nothing here needs a network but the loopback: the Agents SDK's trace export
is switched off, and ``OpenAIEmbeddings`` runs with
``check_embedding_ctx_length=False`` (with the default True it would fetch a
tiktoken encoding from the internet, and then send OpenAI's token ids, which
mean nothing to another model's tokenizer)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import openai
import pytest
from openai_helpers import Accounts, real_model_server
from pydantic import BaseModel

adyton_llama = pytest.importorskip("adyton_llama", reason="adyton-llama is not installed")
adyton_guided = pytest.importorskip("adyton_guided", reason="adyton-guided is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def ledger():
    return Accounts(keys=("sk-test",))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, ledger):
    with real_model_server(tmp_path_factory, adyton_guided, ledger, llama={"max_context": 1024}) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


# -- responses ------------------------------------------------------------------


def test_responses_plain_and_streaming_agree(client):
    r = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=16)
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert "paris" in r.output_text.lower()
    assert r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 16
    events = list(client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=16,
                                          stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed",
                                                                       "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == r.output_text == events[-1].response.output_text  # greedy: the same answer


class City(BaseModel):
    city: str
    country: str


def test_responses_structured_output(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Name a city and its country.", temperature=0,
                                max_output_tokens=60,
                                text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                                                 "strict": True}})
    assert r.status == "completed", r.output_text
    data = json.loads(r.output_text)
    assert set(data) == {"city", "country"} and all(isinstance(v, str) for v in data.values())
    # the SDK's parse() with a pydantic model sends the same kind of text.format
    parsed = client.responses.parse(model=MODEL, input="Name a city and its country.", temperature=0,
                                    max_output_tokens=60, text_format=City)
    assert isinstance(parsed.output_parsed, City)


def test_responses_continue_a_conversation(client):
    first = client.responses.create(model=MODEL, input="My name is Ada.", temperature=0, max_output_tokens=8)
    second = client.responses.create(model=MODEL, input="What is my name?", temperature=0, max_output_tokens=8,
                                     previous_response_id=first.id)
    # the previous turns are in the prompt: it is longer than the question alone
    alone = client.responses.create(model=MODEL, input="What is my name?", temperature=0, max_output_tokens=1)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens


def test_openai_agents_default_model(base_url):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # traces would go to api.openai.com
    model = agents.OpenAIResponsesModel(
        model=MODEL, openai_client=openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0))
    agent = agents.Agent(name="geo", instructions="Answer in one word.", model=model,
                         model_settings=agents.ModelSettings(temperature=0, max_tokens=32))
    result = asyncio.run(agents.Runner.run(agent, "What is the capital of France?"))
    assert isinstance(result.final_output, str) and "paris" in result.final_output.lower()


WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                           "unit": {"type": "string", "enum": ["C", "F"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}


def test_responses_required_tool_call_is_valid(client):
    import jsonschema

    for choice in ("required", {"type": "function", "name": "get_weather"}):
        r = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice=choice, parallel_tool_calls=False, temperature=0,
                                    max_output_tokens=80)
        # one call, complete (with parallel calls allowed this model goes on calling to the limit)
        calls = [o for o in r.output if o.type == "function_call"]
        assert r.status == "completed" and len(calls) == 1, r.output
        for call in calls:
            assert call.name == "get_weather" and call.call_id.startswith("call_")
            jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_openai_agents_function_tool(base_url):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    seen = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    model = agents.OpenAIResponsesModel(
        model=MODEL, openai_client=openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0))
    agent = agents.Agent(name="weather", instructions="Use the tool.", model=model, tools=[get_weather],
                         tool_use_behavior="stop_on_first_tool",
                         model_settings=agents.ModelSettings(temperature=0, max_tokens=80, tool_choice="required",
                                                             parallel_tool_calls=False))
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    # the SDK parsed our function_call, validated its arguments, ran the tool
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert result.final_output == f"sunny in {seen[0]}"


# -- embeddings -----------------------------------------------------------------

TEXTS = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by ten percent."]


def _cos(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_embeddings_float_and_base64(client, ledger):
    before = len(ledger.settled)
    r = client.embeddings.create(model=MODEL, input=TEXTS + [TEXTS[0]], encoding_format="float")
    vectors = [np.array(d.embedding, dtype=np.float32) for d in r.data]
    assert [v.shape for v in vectors] == [(576,)] * 4
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)  # L2-normalised
    assert np.array_equal(vectors[0], vectors[3])  # same text, same vector
    assert not np.array_equal(vectors[0], vectors[1])
    # a paraphrase is closer than an unrelated sentence (measured 0.95 vs 0.73: a wide margin)
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2]) + 0.1
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    b64 = client.embeddings.create(model=MODEL, input=TEXTS[0])  # the SDK asks for base64 by default
    assert np.array_equal(np.array(b64.data[0].embedding, dtype=np.float32), vectors[0])
    # counted once each in the limits ledger: input tokens, no completion
    settled = ledger.settled[before:]
    assert settled == [("sk-test", r.usage.prompt_tokens, 0, "ok"), ("sk-test", b64.usage.prompt_tokens, 0, "ok")]


def test_embeddings_do_not_disturb_generation(client):
    ask = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 12}
    before = client.chat.completions.create(**ask).choices[0].message.content
    client.embeddings.create(model=MODEL, input=[QUESTION, "something else entirely"])
    assert client.chat.completions.create(**ask).choices[0].message.content == before


def test_embeddings_dimensions_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert err.value.body["param"] == "dimensions" and "576" in err.value.body["message"]


def test_litellm_embedding_and_completion(base_url, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list from the internet
    litellm = pytest.importorskip("litellm")
    r = litellm.embedding(model=f"openai/{MODEL}", api_base=base_url + "/v1", api_key="sk-test",
                          input=TEXTS[:2])
    assert len(r.data) == 2 and len(r.data[0]["embedding"]) == 576
    assert r.usage.prompt_tokens > 0
    c = litellm.completion(model=f"openai/{MODEL}", api_base=base_url + "/v1", api_key="sk-test",
                           messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=8)
    assert c.choices[0].message.content.strip()


def test_langchain_openai_embeddings(base_url):
    lc = pytest.importorskip("langchain_openai")
    emb = lc.OpenAIEmbeddings(model=MODEL, base_url=base_url + "/v1", api_key="sk-test",
                              check_embedding_ctx_length=False, max_retries=0)
    docs = emb.embed_documents(TEXTS)
    query = emb.embed_query(TEXTS[0])
    assert len(docs) == 3 and len(query) == 576
    assert np.allclose(query, docs[0], atol=1e-6)


def test_base64_is_little_endian_float32(base_url):
    import httpx

    r = httpx.post(base_url + "/v1/embeddings", json={"model": MODEL, "input": "hi", "encoding_format": "base64"},
                   headers={"Authorization": "Bearer sk-test"}, timeout=60)
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 576 * 4
