"""POST /v1/responses with the official SDK against a real hypercorn server and
a scripted backend: the response object, the streaming event sequence as the
SDK parses it, previous_response_id per account, and every refusal in the
OpenAI error shape."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai_helpers import Accounts

from adyton.testing import ScriptedBackend

STREAM_SEQUENCE = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
    "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
    "response.content_part.done", "response.output_item.done", "response.completed",
]


@pytest.fixture
def accounts():
    return Accounts()


@pytest.fixture
def backend():
    return ScriptedBackend()


@pytest.fixture
def server(serve, accounts, backend):
    return serve(backend, plugins=[accounts])


def test_create_plain(server, sdk, accounts, backend):
    client = sdk(server, api_key="sk-a")
    r = client.responses.create(model="scripted-model", input="hi there", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.model == "scripted-model" and r.instructions == "Be brief."
    assert r.output_text == "Hello, world!"
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert r.usage.output_tokens == 4 and r.usage.total_tokens == r.usage.input_tokens + 4
    assert backend.prompts[-1] == "<system>Be brief.\n<user>hi there\n<assistant>"
    assert accounts.settled == [("sk-a", r.usage.input_tokens, 4, "ok")]


def test_max_output_tokens_is_incomplete(server, sdk):
    r = sdk(server, api_key="sk-a").responses.create(model="scripted-model", input="hi", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "Hello," and r.usage.output_tokens == 2


def test_stream_event_sequence(server, sdk):
    client = sdk(server, api_key="sk-a")
    events = list(client.responses.create(model="scripted-model", input="hi", stream=True))
    assert [e.type for e in events] == STREAM_SEQUENCE
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello, world!"
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "Hello, world!"
    assert done.usage.output_tokens == 4
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {done.output[0].id}
    # the SDK's own stream helper assembles the same response
    with client.responses.stream(model="scripted-model", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello, world!"


def test_stream_incomplete(server, sdk):
    events = list(sdk(server, api_key="sk-a").responses.create(
        model="scripted-model", input="hi", stream=True, max_output_tokens=1))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_input_items_and_previous_response(server, sdk, backend):
    a = sdk(server, api_key="sk-a")
    first = a.responses.create(model="scripted-model", input=[
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
    ])
    second = a.responses.create(model="scripted-model", input="second question",
                                previous_response_id=first.id, instructions="New rules.")
    assert second.previous_response_id == first.id
    assert backend.prompts[-1] == ("<system>New rules.\n<developer>Answer in English.\n<user>first question\n"
                                   "<assistant>Hello, world!\n<user>second question\n<assistant>")
    # a chain keeps growing
    third = a.responses.create(model="scripted-model", input="third", previous_response_id=second.id)
    assert backend.prompts[-1].count("<assistant>Hello, world!") == 2 and third.status == "completed"
    # another account cannot continue it: not found, like an unknown id
    b = sdk(server, api_key="sk-b")
    with pytest.raises(openai.NotFoundError) as err:
        b.responses.create(model="scripted-model", input="x", previous_response_id=first.id)
    assert err.value.body["code"] == "previous_response_not_found"
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        a.responses.create(model="scripted-model", input="x", previous_response_id="resp_nope")
    # store: false is not kept
    unstored = a.responses.create(model="scripted-model", input="x", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        a.responses.create(model="scripted-model", input="x", previous_response_id=unstored.id)


def test_streamed_response_is_stored_too(server, sdk, backend):
    a = sdk(server, api_key="sk-a")
    events = list(a.responses.create(model="scripted-model", input="q1", stream=True))
    a.responses.create(model="scripted-model", input="q2", previous_response_id=events[-1].response.id)
    assert "<user>q1\n<assistant>Hello, world!\n<user>q2" in backend.prompts[-1]


def test_function_call_items_become_turns(server, backend):
    body = {"model": "scripted-model", "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]}
    r = httpx.post(server.base_url + "/v1/responses", json=body, headers={"Authorization": "Bearer sk-a"})
    assert r.status_code == 200, r.text
    assert "<tool>sunny" in backend.prompts[-1]


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "x", "tools": [{"type": "web_search_preview"}]}, 400, "tools[0].type", "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, 400, "tools[0].type",
     "unsupported_parameter"),
    ({"input": "x", "reasoning": {"effort": "high"}}, 400, "reasoning", "unsupported_parameter"),
    ({"input": "x", "background": True}, 400, "background", "unsupported_parameter"),
    ({"input": "x", "include": ["file_search_call.results"]}, 400, "include", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, 400,
     "input[0].content[0].type", "unsupported_parameter"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type", "unsupported_parameter"),
    ({"input": [{"role": "wizard", "content": "x"}]}, 400, "input[0].role", "invalid_value"),
    ({}, 400, "input", "missing_required_parameter"),
    ({"input": 5}, 400, "input", "invalid_value"),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens", "invalid_value"),
    ({"input": "x", "max_output_tokens": 10**6}, 400, "max_output_tokens", "context_length_exceeded"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema",
     "missing_required_parameter"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}},
     400, "text.format", "unsupported_constraint"),
    ({"input": "x", "bogus": 1}, 400, "bogus", "unknown_parameter"),
    ({"input": "x", "model": "nope"}, 404, "model", "model_not_found"),
])
def test_refusals_are_openai_errors(server, accounts, body, status, param, code):
    r = httpx.post(server.base_url + "/v1/responses", json={"model": "scripted-model", **body},
                   headers={"Authorization": "Bearer sk-a"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == code and error["message"], error
    assert accounts.settled == []  # refused before anything was counted


def test_bad_key_is_401(server):
    r = httpx.post(server.base_url + "/v1/responses", json={"input": "x"},
                   headers={"Authorization": "Bearer sk-nope"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_backend_failure_mid_stream_is_an_error_event(serve, sdk):
    class Failing(ScriptedBackend):
        def generate(self, prompt, step, max_tokens, cancelled):
            yield from list(super().generate(prompt, step, 2, cancelled))[:1]
            raise RuntimeError("engine fell over")

    server = serve(Failing())
    raw = httpx.post(server.base_url + "/v1/responses", json={"input": "x", "stream": True}, timeout=30)
    events = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert "engine fell over" in events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


# -- function tools -------------------------------------------------------------

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = ["<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "</tool_call>"]


@pytest.fixture
def caller(serve, accounts):
    backend = ScriptedBackend(["Let me check.", *CALL])
    return serve(backend, plugins=[accounts]), backend


def test_function_call_output_items(caller, sdk):
    server, _backend = caller
    r = sdk(server, api_key="sk-a").responses.create(model="scripted-model", input="weather in Paris?",
                                                     tools=[WEATHER])
    assert r.status == "completed" and [o.type for o in r.output] == ["message", "function_call"]
    assert r.output_text == "Let me check."
    call = r.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    assert r.tools[0].name == "get_weather" and r.tool_choice == "auto"


def test_function_call_stream_events(caller, sdk):
    server, _ = caller
    events = list(sdk(server, api_key="sk-a").responses.create(model="scripted-model", input="weather?",
                                                               tools=[WEATHER], stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]
    args = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(args.arguments) == {"city": "Paris"}
    final = events[-1].response
    assert [o.type for o in final.output] == ["message", "function_call"]


def test_function_call_round_trip(caller, sdk):
    server, backend = caller
    client = sdk(server, api_key="sk-a")
    first = client.responses.create(model="scripted-model", input="weather?", tools=[WEATHER])
    call = first.output[1]
    client.responses.create(model="scripted-model", tools=[WEATHER], previous_response_id=first.id,
                            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    # the stored turn carries the call; its result comes back as a tool turn
    assert backend.prompts[-1].endswith("<assistant>Let me check.\n<tool>sunny\n<assistant>")


def test_required_tool_choice_needs_guided_decoding(caller):
    server, _ = caller
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        r = httpx.post(server.base_url + "/v1/responses", headers={"Authorization": "Bearer sk-a"},
                       json={"input": "x", "tools": [WEATHER], "tool_choice": choice})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_constraint", r.text


@pytest.mark.parametrize("body, param, code", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_value"),
    ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice",
     "unsupported_parameter"),
    ({"tools": [{**WEATHER, "name": "bad name!"}]}, "tools[0].name", "invalid_value"),
    ({"tools": [{**WEATHER, "description": 5}]}, "tools[0].description", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ({"tools": [{**WEATHER, "bogus": 1}]}, "tools[0].bogus", "unknown_parameter"),
    ({"tools": [WEATHER], "include": ["message.output_text.logprobs"]}, "include", "unsupported_parameter"),
])
def test_bad_tools_are_openai_errors(caller, body, param, code):
    server, _ = caller
    r = httpx.post(server.base_url + "/v1/responses", headers={"Authorization": "Bearer sk-a"},
                   json={"input": "x", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code


def test_retrieve_and_delete_stored_responses(server, sdk):
    a, b = sdk(server, api_key="sk-a"), sdk(server, api_key="sk-b")
    created = a.responses.create(model="scripted-model", input="hi", metadata={"k": "v"})
    got = a.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == "Hello, world!" and got.metadata == {"k": "v"}
    streamed = list(a.responses.create(model="scripted-model", input="hi", stream=True))[-1].response
    assert a.responses.retrieve(streamed.id).output_text == "Hello, world!"
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(created.id)  # another account's
    with pytest.raises(openai.NotFoundError):
        b.responses.delete(created.id)
    a.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.create(model="scripted-model", input="x", previous_response_id=created.id)
    unstored = a.responses.create(model="scripted-model", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(unstored.id)


def test_openai_agents_against_the_scripted_model(server):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # traces would go to api.openai.com
    import asyncio

    def agent():  # a client per event loop (httpx's async pool is bound to its loop)
        model = agents.OpenAIResponsesModel(model="scripted-model", openai_client=openai.AsyncOpenAI(
            base_url=server.base_url + "/v1", api_key="sk-a", max_retries=0))
        return agents.Agent(name="a", instructions="Be brief.", model=model)

    assert asyncio.run(agents.Runner.run(agent(), "hi")).final_output == "Hello, world!"

    async def streamed():
        run = agents.Runner.run_streamed(agent(), "hi")
        deltas = [e.data.delta async for e in run.stream_events()
                  if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
        return run.final_output, deltas

    final, deltas = asyncio.run(streamed())
    assert final == "Hello, world!" and "".join(deltas) == final


def test_logprobs_when_included(server, sdk):
    client = sdk(server, api_key="sk-a")
    r = client.responses.create(model="scripted-model", input="hi", include=["message.output_text.logprobs"],
                                top_logprobs=2)
    part = r.output[0].content[0]
    assert [lp.token for lp in part.logprobs] == ["Hello", ",", " world", "!"]
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in part.logprobs)
    events = list(client.responses.create(model="scripted-model", input="hi", stream=True,
                                          include=["message.output_text.logprobs"]))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [lp.token for e in deltas for lp in e.logprobs] == ["Hello", ",", " world", "!"]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert len(done.logprobs) == 4
    # without include: none, and top_logprobs alone is listed as ignored
    raw = httpx.post(server.base_url + "/v1/responses", headers={"Authorization": "Bearer sk-a"},
                     json={"input": "hi", "top_logprobs": 2})
    assert raw.json()["output"][0]["content"][0]["logprobs"] == []
    assert raw.headers["x-adyton-ignored-params"] == "top_logprobs"
