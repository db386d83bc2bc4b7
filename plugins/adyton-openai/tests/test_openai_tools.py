"""Tool calling and tolerant requests on /v1/chat/completions, with a scripted
backend (the protocol: request validation, history rendering, response and
stream shapes, finish_reason), through the official SDK and raw HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

import adyton_guided
from adyton import ChatTemplate, PreparedPrompt
from adyton.testing import ScriptedBackend

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}

CALL = ['<tool_call>', '{"name": "get_weather", "arguments": ', '{"city": "Paris"}}', '</tool_call>']
TWO_CALLS = ["Let me see. "] + CALL + ["\n", '<tool_call>', '{"name": "add", "arguments": {"a": 2}}', '</tool_call>']


class TemplateBackend(ScriptedBackend):
    """A scripted backend that renders chats with the kernel's renderer (a
    ChatML template, so the kernel's tool-call convention)."""

    def prepare(self, request, model):
        if request.messages is None:
            return super().prepare(request, model)
        text = ChatTemplate(None).render_request(request).text
        return PreparedPrompt(model=model, token_ids=list(range(len(text.split()))), text=text,
                              context_length=self.context_length)


def post(server, body, **kw):
    return httpx.post(server.base_url + CHAT, json=body, timeout=30, **kw)


def sse(server, body):
    chunks = []
    with httpx.stream("POST", server.base_url + CHAT, json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_calls_in_the_response_and_finish_reason(serve, sdk):
    server = serve(TemplateBackend(TWO_CALLS))
    client = sdk(server)
    resp = client.chat.completions.create(model="scripted-model", messages=USER, tools=[WEATHER, ADD])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me see."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "add", {"a": 2})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


def test_no_call_is_plain_content(serve, sdk):
    server = serve(TemplateBackend(["It", " is", " sunny."]))
    resp = sdk(server).chat.completions.create(model="scripted-model", messages=USER, tools=[WEATHER])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == "It is sunny." and resp.choices[0].message.tool_calls is None


def test_stream_chunks_assemble_in_the_sdk(serve, sdk):
    server = serve(TemplateBackend(TWO_CALLS))
    chunks = sse(server, {"messages": USER, "tools": [WEATHER, ADD]})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    call_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    # per call: id, type and name first (arguments ""), then the arguments
    assert call_deltas[0] == {"index": 0, "id": call_deltas[0]["id"], "type": "function",
                              "function": {"name": "get_weather", "arguments": ""}}
    assert call_deltas[1] == {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    assert call_deltas[2]["index"] == 1 and call_deltas[2]["function"]["name"] == "add"
    assert "".join(d.get("content") or "" for d in deltas) == "Let me see. "
    assert not any("<tool" in (d.get("content") or "") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the SDK's own stream assembly
    with sdk(server).chat.completions.stream(model="scripted-model", messages=USER, tools=[WEATHER, ADD]) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[1].function.arguments) == {"a": 2}
    assert final.choices[0].finish_reason == "tool_calls"


def test_history_with_calls_and_results_is_rendered(serve, sdk):
    backend = TemplateBackend(["Sunny."])
    server = serve(backend)
    client = sdk(server)
    first = client.chat.completions.create(model="scripted-model", messages=USER, tools=[WEATHER])
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 C and sunny"},
    ]
    resp = client.chat.completions.create(model="scripted-model", messages=messages, tools=[WEATHER])
    assert resp.choices[0].message.content == "Sunny." and first
    prompt = backend.prompts[-1]
    assert "You can call the following functions" in prompt and '"name": "get_weather"' in prompt
    assert ('<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
            in prompt)
    assert '<tool_response>{"name": "get_weather", "content": "18 C and sunny"}</tool_response>' in prompt


def test_echoing_the_response_message_back_is_accepted(serve, sdk):
    server = serve(TemplateBackend(CALL))
    client = sdk(server)
    resp = client.chat.completions.create(model="scripted-model", messages=USER, tools=[WEATHER])
    echoed = resp.choices[0].message.model_dump()
    assert "function_call" in echoed and "audio" in echoed and "refusal" in echoed
    messages = USER + [echoed, {"role": "tool", "tool_call_id": resp.choices[0].message.tool_calls[0].id,
                                "content": "sunny"}]
    raw = client.chat.completions.with_raw_response.create(model="scripted-model", messages=messages, tools=[WEATHER])
    assert raw.http_response.status_code == 200
    assert "x-adyton-ignored-params" not in raw.http_response.headers  # nulls ask for nothing
    # a non-empty echoed field is listed (and refused with openai.strict)
    messages[1] = {**echoed, "annotations": [{"type": "url_citation"}]}
    r = post(server, {"messages": messages, "tools": [WEATHER]})
    assert r.status_code == 200 and r.headers["x-adyton-ignored-params"] == "messages.annotations"
    # what parse() adds is the content itself: accepted silently
    parsed = USER + [{"role": "assistant", "content": '{"a": 1}', "parsed": {"a": 1}, "refusal": None}]
    r = post(server, {"messages": parsed})
    assert r.status_code == 200 and "x-adyton-ignored-params" not in r.headers
    # an unknown key is named in full
    r = post(server, {"messages": USER + [{"role": "assistant", "content": "x", "mood": "happy"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].mood"


def test_strict_refuses_a_non_empty_echoed_field(serve):
    server = serve(TemplateBackend(["ok"]), settings={"openai": {"strict": True}})
    ok = USER + [{"role": "assistant", "content": "hi", "refusal": None, "function_call": None,
                  "audio": None, "annotations": []}]
    assert post(server, {"messages": ok}).status_code == 200
    bad = USER + [{"role": "assistant", "content": "hi", "audio": {"id": "audio_1"}}]
    r = post(server, {"messages": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.audio"


@pytest.mark.parametrize("body,param", [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "logprobs": True}, "logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
])
def test_bad_tool_requests_are_400(serve, body, param):
    server = serve(TemplateBackend(["ok"]))
    r = post(server, {"messages": USER, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_required_without_guided_decoding_says_so(serve):
    server = serve(TemplateBackend(CALL))
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = post(server, {"messages": USER, "tools": [WEATHER], "tool_choice": choice})
        assert r.status_code == 400, r.text
        assert "adyton-guided" in r.json()["error"]["message"]
    # auto works without it: calls are parsed from the text
    r = post(server, {"messages": USER, "tools": [WEATHER]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"]


def test_tool_choice_none_hides_the_tools(serve):
    backend = TemplateBackend(CALL)
    server = serve(backend)
    r = post(server, {"messages": USER, "tools": [WEATHER], "tool_choice": "none"})
    body = r.json()
    assert "You can call" not in backend.prompts[-1]
    assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]
    assert body["choices"][0]["message"]["content"].startswith("<tool_call>")


def test_extensions_become_constraints_and_sampler_settings(serve):
    """vLLM / llama.cpp extension fields reach adyton-guided as constraints."""
    server = serve(TemplateBackend(["yes"], extra_vocab=["no", "maybe"]), plugins=[adyton_guided])
    for extra in ({"guided_choice": ["yes", "no"]}, {"guided_regex": "(yes|no)"},
                  {"guided_grammar": 'start: "yes" | "no"'}, {"grammar": 'root ::= "yes" | "no"'}):
        r = post(server, {"messages": USER, **extra})
        assert r.status_code == 200, (extra, r.text)
        assert r.headers["x-adyton-guided"] == "enforced" and r.json()["choices"][0]["message"]["content"] == "yes"
        assert "x-adyton-ignored-params" not in r.headers
    r = post(server, {"messages": USER, "guided_choice": ["no", "maybe"]})
    assert r.json()["choices"][0]["message"]["content"] in ("no", "maybe")
    for bad, param in (({"guided_json": "{not json"}, "guided_json"), ({"guided_regex": "("}, "guided_regex"),
                       ({"guided_choice": ["yes"], "guided_regex": "yes"}, None)):
        r = post(server, {"messages": USER, **bad})
        assert r.status_code == 400, r.text
        if param:
            assert r.json()["error"]["param"] == param
    for ok in ({"top_k": -1}, {"min_p": 0.1}, {"repetition_penalty": 1.3}, {"min_tokens": 2},
               {"chat_template_kwargs": {"enable_thinking": False}}):
        r = post(server, {"messages": USER, "max_tokens": 3, **ok})
        assert r.status_code == 200 and "x-adyton-ignored-params" not in r.headers, (ok, r.text)


def test_min_tokens_bans_end_of_sequence(serve):
    server = serve(ScriptedBackend(["a", "b"]))  # then end-of-sequence
    r = post(server, {"messages": USER, "min_tokens": 4, "max_tokens": 6, "temperature": 0})
    assert r.json()["usage"]["completion_tokens"] >= 4
    r = post(server, {"messages": USER, "max_tokens": 6})
    assert r.json()["usage"]["completion_tokens"] == 2


def test_js_sdk_tool_calls(serve, node_sdk):
    """The OpenAI JavaScript SDK: a forced call (adyton-guided spells it out of
    a character vocabulary), its stream assembled by the SDK's
    ChatCompletionStream, and the call sent back with its result."""
    import os
    import subprocess

    from openai_helpers import JS_DIR

    chars = [chr(c) for c in range(32, 127)]
    server = serve(TemplateBackend(["It", " is", " 42"], extra_vocab=chars), plugins=[adyton_guided])
    result = subprocess.run([node_sdk, "tools_check.mjs"], cwd=JS_DIR, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, ADYTON_BASE_URL=server.base_url))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for seen in (out["chat"], out["stream"]):
        assert seen["finish_reason"] == "tool_calls"
        (call,) = seen["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function" and call["function"]["name"] == "add"
        args = json.loads(call["function"]["arguments"])
        assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
    assert out["stream"]["argument_deltas"] > 1  # the arguments came in fragments
    assert out["follow_up"]["finish_reason"] in ("stop", "length")
