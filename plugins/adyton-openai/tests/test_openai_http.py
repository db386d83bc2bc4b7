"""The HTTP surface below the SDKs: malformed bodies, headers, settings,
OpenAPI, CORS, keep-alive pings, hand-off of constraints and extensions."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

import adyton_openai
from adyton import LogitsProcessor, hookimpl
from adyton.testing import ScriptedBackend

USER = [{"role": "user", "content": "hi there"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def post(server, path, body=None, **kwargs):
    if body is not None and not isinstance(body, (bytes, str)):
        kwargs["json"] = body
    elif body is not None:
        kwargs["content"] = body
    return httpx.post(server.base_url + path, timeout=30, **kwargs)


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if status == 400:
        assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    return error


# -- malformed bodies: every field, wrong types and out-of-range values -> 400 ------------

MSG = {"role": "user", "content": "x"}
CHAT_BAD = [
    ("model", 1), ("model", []), ("model", {}),
    ("messages", "hello"), ("messages", []), ("messages", [1]), ("messages", None),
    ("messages", [{"role": "wizard", "content": "x"}]),
    ("messages", [{"content": "x"}]),
    ("messages", [{"role": "user", "content": 1}]),
    ("messages", [{"role": "user", "content": [{"type": "text"}]}]),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 1}]}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    ("messages", [{"role": "user", "content": [1]}]),
    ("messages", [{"role": "user", "content": "x", "colour": "red"}]),
    ("messages", [{"role": "user", "content": "x", "name": 5}]),
    ("max_tokens", "1"), ("max_tokens", 1.5), ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", True),
    ("max_completion_tokens", "1"), ("max_completion_tokens", 0),
    ("temperature", "1"), ("temperature", -0.1), ("temperature", 2.5), ("temperature", True), ("temperature", []),
    ("top_p", "x"), ("top_p", 1.5), ("top_p", -1),
    ("n", 0), ("n", 17), ("n", "2"), ("n", 1.5),
    ("stop", 1), ("stop", [1]), ("stop", {"a": 1}), ("stop", ["s"] * 17),
    ("seed", "1"), ("seed", 1.5), ("seed", 2**64),
    ("stream", "true"), ("stream", 1),
    ("stream_options", "x"), ("stream_options", {"include_usage": "yes"}), ("stream_options", {"foo": 1}),
    ("logit_bias", []), ("logit_bias", {"a": 1}), ("logit_bias", {"1": 101}), ("logit_bias", {"1": "x"}),
    ("logit_bias", {"-1": 1}),
    ("logprobs", "true"), ("logprobs", 1),
    ("top_logprobs", 21), ("top_logprobs", -1), ("top_logprobs", "1"),
    ("presence_penalty", 3), ("presence_penalty", "0"), ("frequency_penalty", -3),
    ("user", 1),
    ("response_format", "json"), ("response_format", {"type": "xml"}), ("response_format", {"type": "json_schema"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "bad name!"}}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}}),
    ("tools", "x"), ("tools", [{"type": "function"}]), ("tools", [{"type": "function", "function": {}}]),
    ("tool_choice", 1), ("modalities", ["audio"]),
    ("policy", "x"), ("policy_id", 1),
    ("top_k", -2), ("min_p", 2), ("repetition_penalty", 0), ("min_tokens", -1),
    ("guided_json", 1), ("guided_choice", []), ("grammar", 1), ("json_schema", "x"),
    ("chat_template_kwargs", "x"),
    ("metadata", "x"), ("store", "yes"), ("steering_strength", "strong"),
    ("no_such_parameter", 1),
]


@pytest.mark.parametrize("field,value", CHAT_BAD, ids=[f"{f}={json.dumps(v)[:30]}" for f, v in CHAT_BAD])
def test_chat_malformed_field(server, field, value):
    body = {"messages": USER, field: value}
    error = assert_openai_error(post(server, CHAT, body), 400)
    assert error["param"] and error["param"].split(".")[0].split("[")[0] == field, error


COMPLETION_BAD = [
    ("prompt", 1), ("prompt", []), ("prompt", [1]), ("prompt", None), ("prompt", [[1, 2]]),
    ("logprobs", 21), ("logprobs", True), ("logprobs", "1"),
    ("echo", "yes"), ("suffix", 1), ("suffix", "and then"), ("best_of", 0),
    ("max_tokens", "16"), ("temperature", "hot"), ("n", 100), ("stop", 3), ("seed", "x"),
    ("no_such_parameter", True),
]


@pytest.mark.parametrize("field,value", COMPLETION_BAD, ids=[f"{f}={json.dumps(v)[:30]}" for f, v in COMPLETION_BAD])
def test_completion_malformed_field(server, field, value):
    body = {"prompt": "x", field: value}
    error = assert_openai_error(post(server, COMPLETIONS, body), 400)
    assert error["param"] and error["param"].split(".")[0].split("[")[0] == field, error


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("raw", [
    b"", b"{", b"null", b'"text"', b"42", b"[]", b"{'single': 'quotes'}", b"\xff\xfe\x00",
    b'{"messages": NaN}', b'{"temperature": 1e400, "messages": [], "prompt": "x"}',
    b"[" * 100000, b'{"a": ' * 5000,
], ids=lambda raw: repr(raw[:20]))
def test_unparseable_bodies(server, path, raw):
    assert_openai_error(post(server, path, raw, headers={"content-type": "application/json"}), 400)


def test_missing_required(server):
    error = assert_openai_error(post(server, CHAT, {"model": ""}), 400, param="messages")
    assert "Missing required parameter" in error["message"]
    assert_openai_error(post(server, COMPLETIONS, {"model": ""}), 400, param="prompt")


def test_top_logprobs_needs_logprobs(server):
    assert_openai_error(post(server, CHAT, {"messages": USER, "top_logprobs": 2}), 400, param="top_logprobs")


def test_body_without_json_content_type_is_still_parsed(server):
    # curl -d without -H sends form encoding; the body is JSON all the same
    r = post(server, CHAT, json.dumps({"messages": USER}),
             headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


def test_body_too_large_is_413(serve):
    server = serve(settings={"server": {"max_body_bytes": 2048}})
    r = post(server, CHAT, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert_openai_error(r, 413)


def test_unknown_v1_route_is_openai_404(server):
    r = httpx.get(server.base_url + "/v1/no-such-endpoint")
    assert_openai_error(r, 404)
    r = httpx.get(server.base_url + "/v1/chat/completions")
    assert r.status_code == 405
    assert "error" in r.json()


def test_health_stays_the_kernels(server):
    r = httpx.get(server.base_url + "/health")
    assert r.status_code == 200
    assert "status" in r.json()


# -- ignored parameters ---------------------------------------------------------------------

IGNORED = {"parallel_tool_calls": False, "service_tier": "auto", "metadata": {"k": "v"}, "store": False}


def test_ignored_params_header(server):
    r = post(server, CHAT, {"messages": USER, **IGNORED})
    assert r.status_code == 200, r.text
    listed = [p.strip() for p in r.headers["x-adyton-ignored-params"].split(",")]
    assert sorted(listed) == sorted(IGNORED)
    r = post(server, CHAT, {"messages": USER})
    assert "x-adyton-ignored-params" not in r.headers
    with httpx.stream("POST", server.base_url + CHAT, json={"messages": USER, "stream": True, "store": True}) as r:
        assert r.headers["x-adyton-ignored-params"] == "store"
        r.read()
    # tools switched off explicitly: honoured (not shown to the model), not listed
    r = post(server, CHAT, {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
                            "tool_choice": "none"})
    assert r.status_code == 200
    assert "x-adyton-ignored-params" not in r.headers


def test_strict_refuses_ignored_params(serve):
    server = serve(settings={"openai": {"strict": True}})
    error = assert_openai_error(post(server, CHAT, {"messages": USER, "service_tier": "auto"}), 400,
                                param="service_tier")
    assert error["code"] == "unsupported_parameter"
    assert post(server, CHAT, {"messages": USER}).status_code == 200


def test_steering_without_a_plugin_that_steers_is_refused(server):
    """Axionic steering fields go to plugins (adyton-steer); with none installed
    the request is refused, never answered unsteered."""
    error = assert_openai_error(post(server, CHAT, {"messages": USER, "steering_vector_id": "sv_abc123",
                                                    "steering_strength": 1.0}), 400)
    assert error["code"] == "unsupported_parameter" and "steering_vector_id" in error["message"]


# -- hand-off to other plugins: constraints and extension parameters ------------------------


class ClaimAll(LogitsProcessor):
    name = "claim-all"

    def __init__(self, constraints):
        self.handles = list(constraints)

    def process(self, generated, logits):
        pass

    def response_headers(self):
        return {"x-adyton-guided": "test"}


class GuidedStandIn:
    """Claims every constraint and pops Axionic policies, recording what it got."""

    __name__ = "test-guided"

    def __init__(self):
        self.constraints = []
        self.policies = []

    @hookimpl
    def prepare_request(self, request, principal, kernel):
        for key in ("policy", "policy_id", "grammar_hint"):
            if key in request.extra:
                self.policies.append((key, request.extra.pop(key)))

    @hookimpl
    def logits_processors(self, request, model, vocabulary, kernel):
        if request.constraints:
            self.constraints.extend(request.constraints)
            return ClaimAll(request.constraints)
        return None


def test_response_format_becomes_constraints(serve, sdk):
    plugin = GuidedStandIn()
    server = serve(plugins=[plugin])
    client = sdk(server)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    raw = client.chat.completions.with_raw_response.create(
        model="", messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    assert raw.headers["x-adyton-guided"] == "test"
    client.chat.completions.create(model="", messages=USER, response_format={"type": "json_object"})
    first, second = plugin.constraints
    assert (first.kind, first.source, first.value, first.options) == (
        "json_schema", "response_format", schema, {"name": "thing", "strict": True})
    assert (second.kind, second.source, second.value) == ("json_object", "response_format", None)


def test_policy_goes_to_plugins(serve, sdk):
    plugin = GuidedStandIn()
    server = serve(plugins=[plugin], settings={"openai": {"extra_params": ["grammar_hint"]}})
    client = sdk(server)
    policy = {"constraints": {"json_mode": True}}
    client.chat.completions.create(model="", messages=USER, extra_body={"policy": policy})
    client.completions.create(model="", prompt="x", extra_body={"policy_id": "pol_1"})
    client.chat.completions.create(model="", messages=USER, extra_body={"grammar_hint": {"any": "thing"}})
    assert plugin.policies == [("policy", policy), ("policy_id", "pol_1"), ("grammar_hint", {"any": "thing"})]


# -- streaming details ---------------------------------------------------------------------------


def test_pings_while_the_engine_is_silent(serve):
    backend = ScriptedBackend(delay_s=0.3)
    server = serve(backend, settings={"server": {"keepalive_s": 0.1}})
    with httpx.stream("POST", server.base_url + CHAT, json={"messages": USER, "stream": True}) as r:
        raw = r.read().decode()
    assert ": ping\n\n" in raw
    assert raw.endswith("data: [DONE]\n\n")
    server2 = serve(backend, settings={"server": {"keepalive_s": 0.1}, "openai": {"ping": False}})
    with httpx.stream("POST", server2.base_url + CHAT, json={"messages": USER, "stream": True}) as r:
        assert ": ping" not in r.read().decode()


def test_client_disconnect_frees_the_engine(serve, sdk):
    backend = ScriptedBackend(["tok"] * 4, eos_at_end=False, delay_s=0.05)
    server = serve(backend, settings={"queue": {"max_waiting": 0}})
    with httpx.stream("POST", server.base_url + CHAT, json={"messages": USER, "stream": True, "max_tokens": 5000}) as r:
        for line in r.iter_lines():
            if "tok" in line:
                break
    # the engine is given back within a few token steps
    deadline = time.monotonic() + 5
    while backend.running.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not backend.running.is_set()
    assert sdk(server).chat.completions.create(model="", messages=USER, max_tokens=2).choices


# -- CORS, OpenAPI, the serve banner ---------------------------------------------------------------


def test_cors(serve):
    server = serve(settings={"server": {"cors_origins": ["http://localhost:3000"]}})
    pre = httpx.options(server.base_url + CHAT, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code in (200, 204)
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = post(server, CHAT, {"messages": USER}, headers={"Origin": "http://localhost:3000"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "Retry-After" in r.headers["access-control-expose-headers"]
    r = post(server, CHAT, {"messages": USER}, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_document(server):
    doc = httpx.get(server.base_url + "/openapi.json").json()
    paths = doc["paths"]
    for path in (CHAT, COMPLETIONS):
        post_op = paths[path]["post"]
        schema = post_op["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert {"model", "temperature", "stream", "seed", "stop"} <= set(schema["properties"])
        assert schema["additionalProperties"] is False
        assert "400" in post_op["responses"]
        if path == CHAT:
            assert "messages" in schema["required"]
            assert "response_format" in schema["properties"]
        else:
            assert "prompt" in schema["required"]
    assert "get" in paths["/v1/models"]


def test_example_request():
    command = adyton_openai.OpenAIWire().example_request("http://127.0.0.1:8756")
    assert command.startswith("curl http://127.0.0.1:8756/v1/chat/completions")
    assert "Authorization: Bearer" in command and "messages" in command


def test_settings_section(serve):
    from adyton import SettingsError, create_app

    with pytest.raises(SettingsError, match=r"openai\.strict"):
        create_app(settings={"openai": {"strict": "maybe"}}, plugins=[adyton_openai], load_entrypoints=False)


def test_raw_socket_garbage_never_500(server):
    # a truncated body with a lying content-length: the server must not answer 500
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5\r\nConnection: close\r\n\r\n{\"a\":")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
