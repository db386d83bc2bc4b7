"""The Axiom wire format over a real hypercorn socket, without an auth plugin
(only the account number's format is checked)."""

from __future__ import annotations

import json

import httpx
import pytest
from axiom_helpers import RoutedBackend, chat_body

from adyton.testing import ScriptedBackend


def post(server, body=None, *, content=None, headers=None) -> httpx.Response:
    if content is None:  # ASCII-escaped JSON, so lone surrogates travel as \\ud800
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(server.base_url + "/api/chat", content=content, headers=headers, timeout=30)


def assert_error_shape(r: httpx.Response, status: int, code: str, field: str | None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "code", "field"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert body["code"] == code, body
    assert body["field"] == field, body
    return body


# -- success --------------------------------------------------------------------------


def test_success_shape(serve):
    server = serve()
    r = post(server, chat_body("hello there"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"message": "Hello, world!"}


def test_json_reply_is_returned_as_raw_string(serve):
    reply = '{"action": "complete", "message": "finished"}'
    server = serve(ScriptedBackend([reply]))
    r = post(server, chat_body())
    assert r.status_code == 200, r.text
    assert r.json() == {"message": reply}
    assert isinstance(r.json()["message"], str)


def test_system_prompt_is_rendered_first(serve):
    backend = ScriptedBackend()
    server = serve(backend)
    body = chat_body("write code", system_prompt="You are a Senior Code Reviewer")
    body["messages"].append({"role": "assistant", "content": "sure"})
    body["messages"].append({"role": "user", "content": "now"})
    r = post(server, body)
    assert r.status_code == 200, r.text
    prompt = backend.prompts[-1]
    assert "You are a Senior Code Reviewer" in prompt
    assert prompt.index("<system>You are a Senior Code Reviewer") < prompt.index("<user>write code")
    assert prompt.index("<user>write code") < prompt.index("<assistant>sure") < prompt.index("<user>now")


@pytest.mark.parametrize("system_prompt", [None, ""])
def test_no_system_prompt_means_no_system_message(serve, system_prompt):
    backend = ScriptedBackend()
    server = serve(backend)
    body = chat_body("hi")
    body["system_prompt"] = system_prompt
    assert post(server, body).status_code == 200
    assert "<system>" not in backend.prompts[-1]


def test_content_type_with_charset_is_accepted(serve):
    server = serve()
    r = post(server, content=json.dumps(chat_body()).encode(),
             headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_axiom_settings_apply(serve):
    backend = RoutedBackend([], default="tok")
    backend.eos_at_end = False  # would run to the context's end without a cap
    server = serve(backend, settings={"axiom": {"max_tokens": 3, "temperature": 0}})
    r = post(server, chat_body())
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "toktoktok"}


def test_reply_cap_is_fitted_to_the_context(serve):
    # a cap larger than what the context leaves must not become a 400
    backend = ScriptedBackend(context_length=64)
    server = serve(backend, settings={"axiom": {"max_tokens": 1000}})
    r = post(server, chat_body("a few words of prompt"))
    assert r.status_code == 200, r.text


def test_client_cannot_choose_max_tokens(serve):
    # Axiom has no such parameter: unknown body keys are extension parameters
    # no plugin claims, so the kernel refuses them
    server = serve()
    for key in ("max_tokens", "fit_context"):
        r = post(server, chat_body(**{key: 1}))
        assert_error_shape(r, 400, "unsupported_parameter", key)


def test_models_endpoint_lists_names_and_aliases(serve):
    server = serve(settings={"models": {"aliases": {"qwen3_4b": "scripted-model"}}})
    r = httpx.get(server.base_url + "/api/models")
    assert r.status_code == 200
    assert r.json() == {"models": ["qwen3_4b", "scripted-model"]}


# -- models and aliases ----------------------------------------------------------------


def test_alias_resolves(serve):
    backend = ScriptedBackend(models=("smollm2-135m-instruct",))
    server = serve(backend, settings={"models": {"aliases": {"qwen3_4b": "smollm2-135m-instruct",
                                                             "gemma3_1b": "smollm2-135m-instruct"}}})
    for name in ("qwen3_4b", "gemma3_1b", "smollm2-135m-instruct"):
        r = post(server, chat_body(model=name))
        assert r.status_code == 200, (name, r.text)
        assert r.json() == {"message": "Hello, world!"}


def test_unknown_model_is_404_listing_names(serve):
    server = serve(settings={"models": {"aliases": {"gemma3_1b": "scripted-model"}}})
    r = post(server, chat_body(model="qwen3_coder_30b"))
    body = assert_error_shape(r, 404, "model_not_found", "model")
    assert "qwen3_coder_30b" in body["error"]
    assert "scripted-model" in body["error"]
    assert body["available"] == ["gemma3_1b", "scripted-model"]


# -- 401 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "session_id, code, words",
    [
        (None, "missing_session_id", "missing sessionId"),
        ("", "missing_session_id", "missing sessionId"),
        ("123456789", "malformed_session_id", "has 9 digits"),
        ("1" * 65, "malformed_session_id", "has 65 digits"),
        ("1" * 63 + "a", "malformed_session_id", "other than the digits"),
        (" " + "1" * 63, "malformed_session_id", "other than the digits"),
        ("1" * 64 + "\n", "malformed_session_id", "other than the digits"),
        ("١" * 64, "malformed_session_id", "other than the digits"),  # Arabic-Indic digits
        (int("1" * 64), "malformed_session_id", "not a number"),
        (["1" * 64], "malformed_session_id", "not an array"),
    ],
    ids=["absent", "empty", "short", "long", "letter", "space", "newline", "non-ascii-digits",
         "number", "array"],
)
def test_401_missing_or_malformed_session_id(serve, session_id, code, words):
    backend = ScriptedBackend()
    server = serve(backend)
    body = chat_body(session_id=None)
    if session_id is not None:
        body["sessionId"] = session_id
    r = post(server, body)
    err = assert_error_shape(r, 401, code, "sessionId")
    assert words in err["error"]
    assert backend.generations == 0


def test_null_session_id_is_missing(serve):
    body = chat_body(session_id=None)
    body["sessionId"] = None
    err = assert_error_shape(post(serve(), body), 401, "missing_session_id", "sessionId")
    assert "missing sessionId" in err["error"]


def test_401_comes_before_other_validation(serve):
    r = post(serve(), {"sessionId": "12", "messages": []})
    assert_error_shape(r, 401, "malformed_session_id", "sessionId")


# -- 400 / 413 ---------------------------------------------------------------------------

BAD_BODIES = [
    # (body change, code, field, words)
    ({"model": None}, "missing_field", "model", "missing 'model'"),
    ({"model": 3}, "invalid_type", "model", "'model' must be a string"),
    ({"model": "  "}, "invalid_value", "model", "must not be empty"),
    ({"system_prompt": 5}, "invalid_type", "system_prompt", "'system_prompt' must be a string"),
    ({"system_prompt": {"a": 1}}, "invalid_type", "system_prompt", "not an object"),
    ({"messages": None}, "missing_field", "messages", "missing 'messages'"),
    ({"messages": "hi"}, "invalid_type", "messages", "must be an array"),
    ({"messages": {"role": "user", "content": "hi"}}, "invalid_type", "messages", "must be an array"),
    ({"messages": []}, "empty_messages", "messages", "must not be empty"),
    ({"messages": ["hi"]}, "invalid_type", "messages[0]", "must be an object"),
    ({"messages": [{"content": "hi"}]}, "missing_field", "messages[0].role", "missing"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "invalid_role", "messages[0].role", "system_prompt"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "invalid_role", "messages[0].role", "'tool'"),
    ({"messages": [{"role": 1, "content": "hi"}]}, "invalid_role", "messages[0].role", "not 1"),
    ({"messages": [{"role": "user"}]}, "missing_field", "messages[0].content", "missing"),
    ({"messages": [{"role": "user", "content": None}]}, "missing_field", "messages[0].content", "missing"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 42}]},
     "invalid_type", "messages[1].content", "must be a string, not a number"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
     "invalid_type", "messages[0].content", "not an array"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
     "unknown_field", "messages[0].name", "unknown key 'name'"),
    ({"stream": True}, "unsupported_parameter", "stream", "'stream'"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "invalid_value", "messages[0].content", "surrogate"),
    ({"system_prompt": "a\udfffb"}, "invalid_value", "system_prompt", "surrogate"),
]


@pytest.mark.parametrize("change, code, field, words", BAD_BODIES,
                         ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD_BODIES)])
def test_400_bad_fields_are_named(serve, change, code, field, words):
    backend = ScriptedBackend()
    server = serve(backend)
    body = chat_body()
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None or k in ("system_prompt",)}
    r = post(server, body)
    err = assert_error_shape(r, 400, code, field)
    assert words in err["error"], err
    assert backend.generations == 0


@pytest.mark.parametrize(
    "content, content_type, words",
    [
        (b'{"model": ', "application/json", "not valid JSON"),
        (b"", "application/json", "empty"),
        (b"[1, 2]", "application/json", "not an array"),
        (b'"hi"', "application/json", "not a string"),
        (b"\xff\xfe{}", "application/json", "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
        (None, "text/plain", "Content-Type must be application/json"),
        (None, "application/x-www-form-urlencoded", "Content-Type must be application/json"),
        (None, None, "got none"),
    ],
    ids=["truncated", "empty", "array", "string", "bad-utf8", "deep", "text-plain", "form", "no-content-type"],
)
def test_400_not_json(serve, content, content_type, words):
    server = serve()
    if content is None:
        content = json.dumps(chat_body()).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = post(server, content=content, headers=headers)
    code = "invalid_content_type" if "Content-Type" in words or "none" in words else "invalid_json"
    err = assert_error_shape(r, 400, code, None)
    assert words in err["error"]


def test_413_oversize_body(serve):
    backend = ScriptedBackend()
    server = serve(backend, settings={"server": {"max_body_bytes": 2048}})
    r = post(server, chat_body("x" * 4096))
    err = assert_error_shape(r, 413, "request_too_large", None)
    assert "2048 bytes" in err["error"]
    assert backend.generations == 0


def test_413_oversize_chunked_body(serve):
    server = serve(settings={"server": {"max_body_bytes": 2048}})

    def chunks():
        yield b'{"model": "scripted-model", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}]}'

    r = post(server, content=chunks(), headers={"Content-Type": "application/json"})
    assert_error_shape(r, 413, "request_too_large", None)


def test_context_too_long_is_400(serve):
    server = serve(ScriptedBackend(context_length=8))
    r = post(server, chat_body(" ".join(["word"] * 50)))
    assert_error_shape(r, 400, "context_length_exceeded", "messages")


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/api/chat", 405, "method_not_allowed"),
    ("POST", "/api/nothing", 404, "not_found"),
])
def test_other_routes_use_the_axiom_error_shape(serve, method, path, status, code):
    server = serve()
    r = httpx.request(method, server.base_url + path, timeout=30)
    assert_error_shape(r, status, code, None)


def test_busy_queue_is_429_with_retry_after(serve):
    import threading

    backend = ScriptedBackend(delay_s=0.3)
    server = serve(backend, settings={"queue": {"max_waiting": 0}})
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(post(server, chat_body())))
    t.start()
    assert backend.running.wait(10)
    r = post(server, chat_body())
    t.join()
    assert first[0].status_code == 200
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "server_busy"
    assert int(r.headers["Retry-After"]) >= 1


def test_queue_timeout_is_503_with_retry_after(serve):
    import threading

    backend = ScriptedBackend(delay_s=0.5)
    server = serve(backend, settings={"queue": {"max_wait_s": 0.3}})
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(post(server, chat_body())))
    t.start()
    assert backend.running.wait(10)
    r = post(server, chat_body())
    t.join()
    assert first[0].status_code == 200
    assert r.status_code == 503, r.text
    assert "Retry-After" in r.headers
    assert set(r.json()) >= {"error", "code", "field"}


def test_example_request_is_a_curl_command(serve):
    from adyton_axiom import AxiomWireFormat

    cmd = AxiomWireFormat().example_request("http://127.0.0.1:8756")
    assert cmd.startswith("curl -X POST http://127.0.0.1:8756/api/chat")
    assert "sessionId" in cmd


def test_entry_point_is_declared():
    import importlib.metadata as md

    eps = [ep for ep in md.entry_points(group="adyton") if ep.name == "axiom"]
    assert eps and eps[0].value == "adyton_axiom"
