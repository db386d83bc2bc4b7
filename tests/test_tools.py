"""adyton.tools: how tools and tool-call history reach a chat template, the
tool-call convention, and reading calls back out of generated text."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from adyton import ChatTemplate, GenerationRequest, tools
from adyton.tools import CallPiece, ContentPiece, ToolCallReader, split_tool_calls

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ADD = {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}

HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                                         {"id": "call_2", "name": "add", "arguments": '{"a": 1}'}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "2"},
]

#: a template with a tools section, in the style of HF tool-calling templates
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.id }} {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}"
    "{% if m.tool_call_id %} for {{ m.tool_call_id }}{% endif %}\n{% endfor %}"
    "{% if flavour %}FLAVOUR {{ flavour }}\n{% endif %}"
)


def request(**kw):
    kw.setdefault("messages", HISTORY)
    return GenerationRequest(**kw)


def test_template_with_tools_section_gets_tools_and_structured_history():
    template = ChatTemplate(TOOLS_TEMPLATE)
    assert tools.template_has_tools(template)
    text = template.render_request(request(tools=[WEATHER, ADD], template_kwargs={"flavour": "x"})).text
    listed = json.loads(text.splitlines()[0][len("TOOLS "):])
    assert listed[0] == {"type": "function", "function": WEATHER}
    assert 'CALL call_1 get_weather {"city": "Paris"}' in text  # arguments as an object
    assert "[tool]sunny for call_1" in text
    assert "FLAVOUR x" in text
    assert tools.CONVENTION_PROMPT[:20] not in text


def test_convention_without_a_tools_section():
    template = ChatTemplate(None)  # ChatML, no tools variable
    assert not tools.template_has_tools(template)
    text = template.render_request(request(tools=[WEATHER])).text
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou can call the following functions")
    assert json.dumps(WEATHER) in system
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n' \
           '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>' in text
    # both results in one user turn, named by the call they answer
    assert ('<|im_start|>user\n<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>\n'
            '<tool_response>{"name": "add", "content": "2"}</tool_response><|im_end|>') in text


def test_convention_joins_an_existing_system_prompt_and_none_hides_tools():
    template = ChatTemplate(None)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = template.render_request(GenerationRequest(messages=msgs, tools=[WEATHER])).text
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call")
    assert text.count("<|im_start|>system") == 1
    plain = template.render_request(GenerationRequest(messages=msgs, tools=[WEATHER], tool_choice="none")).text
    assert plain == template.render(msgs)


def test_template_kwargs_cannot_replace_what_the_renderer_sets():
    template = ChatTemplate(TOOLS_TEMPLATE)
    text = template.render_request(GenerationRequest(
        messages=[{"role": "user", "content": "hi"}],
        template_kwargs={"messages": [], "add_generation_prompt": False, "flavour": "y"})).text
    assert "[user]hi" in text and "FLAVOUR y" in text


def test_required_constraint_and_request_validation():
    r = GenerationRequest(messages=HISTORY[:1], tools=[WEATHER, ADD], tool_choice="required", tool_name="add")
    c = tools.tool_call_constraint(r)
    assert c.kind == "tool_calls" and c.source == "tool_choice"
    assert [t["name"] for t in c.value["tools"]] == ["add"] and c.value["parallel"] is False
    assert tools.tool_call_constraint(GenerationRequest(messages=HISTORY[:1], tools=[WEATHER])) is None
    with pytest.raises(ValidationError, match="not one of the tools"):
        GenerationRequest(messages=HISTORY[:1], tools=[WEATHER], tool_choice="required", tool_name="nope")
    with pytest.raises(ValidationError, match="unique"):
        GenerationRequest(messages=HISTORY[:1], tools=[WEATHER, WEATHER])


def test_reader_streams_content_and_calls_across_any_split():
    text = ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>')
    whole_content, whole_calls = split_tool_calls(text)
    assert whole_content == "Let me check. "
    assert [(c.name, json.loads(c.arguments)) for c in whole_calls] == [("get_weather", {"city": "Paris"}),
                                                                        ("add", {"a": 2})]
    assert all(c.id.startswith("call_") for c in whole_calls)
    for size in (1, 2, 3, 7):
        reader = ToolCallReader()
        pieces = []
        for i in range(0, len(text), size):
            pieces += reader.feed(text[i:i + size])
        pieces += reader.finish()
        content = "".join(p.text for p in pieces if isinstance(p, ContentPiece))
        assert content == whole_content
        assert [p.call.name for p in pieces if isinstance(p, CallPiece)] == ["get_weather", "add"]
        # no piece of the marker ever leaks out as content
        assert all("<" not in p.text for p in pieces if isinstance(p, ContentPiece))


def test_reader_keeps_what_is_not_a_valid_call_as_content():
    known = [GenerationRequest(messages=HISTORY[:1], tools=[WEATHER]).tools[0]]
    for text in ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
                 '<tool_call>not json</tool_call>',
                 '<tool_call>{"name": "get_weather", "arguments": {"city": "Pa',  # cut by max_tokens
                 'a < b and <tool is not a marker'):
        content, calls = split_tool_calls(text, known)
        assert calls == [] and content == text


def test_reader_streams_arguments_of_constrained_calls():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa}ris \\"</tool_call>\\""}}</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": [1, {"b": 2}]}}</tool_call>')
    known = GenerationRequest(messages=HISTORY[:1], tools=[WEATHER, ADD]).tools
    for size in (1, 3, 11, len(text)):
        reader = ToolCallReader(known, stream_arguments=True)
        pieces = []
        for i in range(0, len(text), size):
            pieces += reader.feed(text[i:i + size])
        pieces += reader.finish()
        starts = [p for p in pieces if isinstance(p, tools.CallStart)]
        assert [p.name for p in starts] == ["get_weather", "add"] and starts[0].id.startswith("call_")
        assert not [p for p in pieces if isinstance(p, (ContentPiece, CallPiece))], pieces
        args, _current = [], None
        for p in pieces:
            if isinstance(p, tools.CallStart):
                args.append("")
            elif isinstance(p, tools.ArgumentsPiece):
                args[-1] += p.text
        assert [json.loads(a) for a in args] == [{"city": 'Pa}ris "</tool_call>"'}, {"a": [1, {"b": 2}]}]
        assert reader.calls == 2
    # cut short: what came stays, nothing more; a block of another shape is read whole
    reader = ToolCallReader(known, stream_arguments=True)
    pieces = reader.feed('<tool_call>{"name": "add", "arguments": {"a": ') + reader.finish()
    assert [type(p).__name__ for p in pieces] == ["CallStart", "ArgumentsPiece"]
    reader = ToolCallReader(known, stream_arguments=True)
    pieces = reader.feed('<tool_call>{"arguments": {"a": 1}, "name": "add"}</tool_call>') + reader.finish()
    assert [type(p).__name__ for p in pieces] == ["CallPiece"]
