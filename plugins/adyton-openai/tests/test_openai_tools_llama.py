"""Tool calling and structured output over the real default model
(SmolLM2-135M-Instruct via adyton-llama, calls constrained by adyton-guided),
driven by the real client libraries: the official openai SDK, instructor
(default TOOLS mode), pydantic-ai (default output_type and an
``@agent.tool``) and langchain-openai (``bind_tools``,
``with_structured_output``). A 135M model chooses tools badly: these tests
check the protocol and that every call parses and validates against its
schema, not the model's judgement."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai_helpers import real_model_server
from pydantic import BaseModel, Field

import adyton_guided

adyton_llama = pytest.importorskip("adyton_llama", reason="adyton-llama is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

MODEL = "smollm2-135m-instruct"
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"]}
ADD_PARAMS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": WEATHER_PARAMS}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD_PARAMS}}
SCHEMAS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    with real_model_server(tmp_path_factory, adyton_guided) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


def check_calls(calls, names=None):
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert names is None or call.function.name in names
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        assert set(args) <= set(SCHEMAS[call.function.name]["properties"])  # declared keys only


def test_required_gives_a_valid_call(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, ADD],
                                          tool_choice="required", max_tokens=80, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    check_calls(choice.message.tool_calls)


def test_named_function_and_no_parallel_calls(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 plus 40?"}], tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=60, temperature=0.7, seed=3)
    calls = resp.choices[0].message.tool_calls
    check_calls(calls, {"add"})
    assert len(calls) == 1 and resp.choices[0].finish_reason == "tool_calls"


def test_auto_answers_in_text_or_a_valid_call(client):
    for seed in range(3):
        resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, ADD], max_tokens=60,
                                              temperature=1.0, seed=seed)
        choice = resp.choices[0]
        if choice.message.tool_calls:
            check_calls(choice.message.tool_calls)
            assert choice.finish_reason in ("tool_calls", "length")
        else:
            assert (choice.message.content and "<tool_call>" not in choice.message.content.replace(" ", "")) \
                or choice.finish_reason == "length"


def test_streamed_call_assembles_in_the_sdk(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                        max_tokens=80, temperature=0) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    check_calls(choice.message.tool_calls, {"get_weather"})


def test_echoing_the_message_back_and_answering_from_the_result(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                          tool_choice="required", max_tokens=80, temperature=0)
    message = resp.choices[0].message
    messages = ASK + [message.model_dump(), {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                                             "content": "18 degrees and sunny"}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, tools=[WEATHER],
                                                           max_tokens=40, temperature=0)
    assert raw.http_response.status_code == 200
    assert "x-adyton-ignored-params" not in raw.http_response.headers
    answer = raw.parse().choices[0]
    assert answer.message.content or answer.message.tool_calls


class Person(BaseModel):
    name: str
    age: int


class ShortPerson(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)


def test_structured_output_keeps_to_the_declared_keys(client):
    # no additionalProperties in a pydantic model's schema: the hobby asked for has no place
    resp = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person with a name, an age and a hobby."}],
        response_format=ShortPerson, max_tokens=60, temperature=1.0, seed=1)
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, ShortPerson)
    assert set(json.loads(resp.choices[0].message.content)) == {"name", "age"}


def test_instructor_default_tools_mode(base_url):
    import instructor

    client = instructor.from_openai(openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0))
    assert client.mode is instructor.Mode.TOOLS
    person = client.chat.completions.create(
        model=MODEL, response_model=Person, max_retries=0, max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Extract: Ada Lovelace was 36 years old."}])
    assert isinstance(person, Person)


def test_pydantic_ai_output_type_and_a_tool(base_url):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.usage import UsageLimits

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=base_url + "/v1", api_key="sk-test"))
    agent = Agent(model, output_type=Person, model_settings={"max_tokens": 80, "temperature": 0})
    result = agent.run_sync("Invent a person.", usage_limits=UsageLimits(request_limit=3))
    assert isinstance(result.output, Person)

    seen: list[dict] = []
    tool_agent = Agent(model, model_settings={"max_tokens": 80, "temperature": 0})

    @tool_agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        seen.append({"city": city})
        return "18 degrees and sunny"

    from pydantic_ai.exceptions import UsageLimitExceeded

    try:
        result = tool_agent.run_sync("What is the weather in Paris?", usage_limits=UsageLimits(request_limit=3))
        assert isinstance(result.output, str)
    except UsageLimitExceeded:  # a tiny model may call the tool until the limit: the protocol held
        assert seen
    assert all(isinstance(s["city"], str) for s in seen)


def test_langchain_bind_tools_and_structured_output(base_url):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=base_url + "/v1", api_key="sk-test", max_retries=0,
                     max_tokens=60, temperature=0)
    message = llm.bind_tools([add], tool_choice="required").invoke("What is 2 plus 40?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "add"
    args = message.tool_calls[0]["args"]
    jsonschema.validate(args, ADD_PARAMS)
    auto = llm.bind_tools([add]).invoke("What is 2 plus 40?")
    for call in auto.tool_calls:
        jsonschema.validate(call["args"], ADD_PARAMS)
    person = llm.with_structured_output(Person).invoke("Extract: Ada Lovelace was 36 years old.")
    assert isinstance(person, Person)
