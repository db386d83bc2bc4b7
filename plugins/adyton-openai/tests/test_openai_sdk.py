"""The official openai Python SDK against a real hypercorn server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from adyton import (
    Authenticator,
    Limiter,
    Principal,
    RateLimited,
    Reservation,
    Unauthorized,
    hookimpl,
)
from adyton.testing import ScriptedBackend

USER = [{"role": "user", "content": "hi there"}]


# -- plain chat -------------------------------------------------------------------


def test_sync_chat(server, sdk):
    client = sdk(server)
    r = client.chat.completions.create(model="", messages=USER, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "scripted-model"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Hello, world!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + 4
    assert isinstance(r.created, int) and r.created > 0


def test_model_omitted_and_named(server, sdk):
    client = sdk(server)
    # model omitted entirely (the SDK lets extra_body drop nothing, so go raw)
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "scripted-model"
    r2 = client.chat.completions.create(model="scripted-model", messages=USER)
    assert r2.choices[0].message.content == "Hello, world!"


async def test_async_chat(server, sdk):
    client = sdk(server, asynchronous=True)
    r = await client.chat.completions.create(model="", messages=USER, max_tokens=2)
    assert r.choices[0].message.content == "Hello,"
    assert r.choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(model="", messages=USER, stream=True)
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "Hello, world!"
    await client.close()


def test_content_parts(server, sdk):
    r = sdk(server).chat.completions.create(
        model="", messages=[{"role": "system", "content": "be brief"},
                            {"role": "user", "content": [{"type": "text", "text": "part one"},
                                                         {"type": "text", "text": "part two"}]}])
    assert r.choices[0].message.content == "Hello, world!"


def test_max_completion_tokens(server, sdk):
    r = sdk(server).chat.completions.create(model="", messages=USER, max_completion_tokens=1)
    assert r.choices[0].message.content == "Hello"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 1


# -- streaming --------------------------------------------------------------------


def test_stream_with_usage(server, sdk):
    chunks = list(sdk(server).chat.completions.create(
        model="", messages=USER, stream=True, stream_options={"include_usage": True}))
    # first: the role; then content with finish_reason None; then an empty delta with
    # the finish reason; then the usage chunk with no choices
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].finish_reason is None
    content = list(chunks[1:-2])
    assert "".join(c.choices[0].delta.content for c in content) == "Hello, world!"
    assert all(c.choices[0].finish_reason is None for c in content)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_raw_sse_format(server):
    body = {"messages": USER, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last  # no include_usage: no usage fields at all


def test_stream_without_usage_has_no_usage_chunk(server, sdk):
    chunks = list(sdk(server).chat.completions.create(model="", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_two_choices(server, sdk):
    client = sdk(server)
    r = client.chat.completions.create(model="", messages=USER, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content == "Hello, world!" for c in r.choices)
    assert r.usage.completion_tokens == 8
    texts = {0: "", 1: ""}
    finished = {}
    roles = set()
    for chunk in client.chat.completions.create(model="", messages=USER, n=2, stream=True):
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            if choice.delta.content:
                texts[choice.index] += choice.delta.content
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert roles == {0, 1}
    assert texts == {0: "Hello, world!", 1: "Hello, world!"}
    assert finished == {0: "stop", 1: "stop"}


def test_stop(server, sdk):
    client = sdk(server)
    r = client.chat.completions.create(model="", messages=USER, stop=[" world"])
    assert r.choices[0].message.content == "Hello,"
    assert r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="", messages=USER, stop="!")
    assert r.choices[0].message.content == "Hello, world"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="", messages=USER, stop=[","], stream=True) if c.choices)
    assert streamed == "Hello"


def test_seed_reproducibility(serve, sdk):
    # many competing tokens so that temperature 2 really samples
    backend = ScriptedBackend(["a", "b", "c", "d", "e", "f", "g", "h"], extra_vocab=[f" w{i}" for i in range(300)])
    server = serve(backend)
    client = sdk(server)

    def run(seed):
        return client.chat.completions.create(model="", messages=USER, temperature=2.0, seed=seed,
                                              max_tokens=8).choices[0].message.content

    first = run(1234)
    assert run(1234) == first
    assert run(-5) == run(-5)  # any int64 seed works
    others = {run(s) for s in range(1, 6)}
    assert len(others | {first}) > 1


def test_logprobs_chat(server, sdk):
    client = sdk(server)
    r = client.chat.completions.create(model="", messages=USER, logprobs=True, top_logprobs=2, temperature=0)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", ",", " world", "!"]
    for t in content:
        assert t.logprob <= 0
        assert t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].token == t.token
    r = client.chat.completions.create(model="", messages=USER, logprobs=True)
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    r = client.chat.completions.create(model="", messages=USER)
    assert r.choices[0].logprobs is None
    tokens = []
    for chunk in client.chat.completions.create(model="", messages=USER, logprobs=True, top_logprobs=1, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += [t.token for t in chunk.choices[0].logprobs.content]
    assert tokens == ["Hello", ",", " world", "!"]


def test_logit_bias(server, sdk):
    # token ids of the scripted vocabulary: 0 = <eos>, then the sorted words
    backend_tokens = ["<eos>"] + sorted({"Hello", ",", " world", "!"})
    ban = backend_tokens.index(" world")
    r = sdk(server).chat.completions.create(model="", messages=USER, temperature=0,
                                            logit_bias={str(ban): -100}, max_tokens=4)
    assert " world" not in r.choices[0].message.content


# -- legacy completions -------------------------------------------------------------------


def test_completions(server, sdk):
    client = sdk(server)
    r = client.completions.create(model="scripted-model", prompt="Once upon a time")
    assert r.object == "text_completion"
    assert r.choices[0].text == "Hello, world!"
    assert r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="scripted-model", prompt="x", max_tokens=2, echo=True)
    assert r.choices[0].text == "xHello,"
    assert r.choices[0].finish_reason == "length"
    r = client.completions.create(model="scripted-model", prompt=["a", "b"], n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 16


def test_completions_logprobs_and_stream(server, sdk):
    client = sdk(server)
    r = client.completions.create(model="scripted-model", prompt="x", logprobs=2)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["Hello", ",", " world", "!"]
    assert lp.text_offset == [0, 5, 6, 12]
    assert len(lp.top_logprobs) == 4 and "Hello" in lp.top_logprobs[0]
    text, offsets = "", []
    chunks = list(client.completions.create(model="scripted-model", prompt=["x", "y"], stream=True,
                                            logprobs=1, stream_options={"include_usage": True}))
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.index == 0:
                text += choice.text
                if choice.logprobs:
                    offsets += choice.logprobs.text_offset
    assert text == "Hello, world!"
    assert offsets == [0, 5, 6, 12]
    assert {c.index for ch in chunks for c in ch.choices} == {0, 1}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


# -- models ---------------------------------------------------------------------------


def test_models_list_and_aliases(serve, sdk):
    server = serve(settings={"models": {"aliases": {"qwen3_4b": "scripted-model"}}})
    client = sdk(server)
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["scripted-model", "qwen3_4b"]
    assert all(m.object == "model" and m.owned_by == "test" and m.created > 0 for m in models.data)
    r = client.chat.completions.create(model="qwen3_4b", messages=USER)
    assert r.model == "scripted-model"
    assert client.models.retrieve("qwen3_4b").id == "qwen3_4b"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_namespaced_ids(serve, sdk):
    server = serve(settings={"openai": {"namespaced_ids": True}})
    client = sdk(server)
    assert [m.id for m in client.models.list().data] == ["test/scripted-model"]
    r = client.chat.completions.create(model="test/scripted-model", messages=USER)
    assert r.model == "test/scripted-model"
    # the bare id still resolves
    assert client.chat.completions.create(model="scripted-model", messages=USER).choices


# -- errors as SDK exceptions ------------------------------------------------------------


def test_bad_request(server, sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model="", messages=USER, temperature=5)
    assert info.value.status_code == 400
    body = info.value.body
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "temperature"
    assert "temperature" in body["message"]


def test_model_not_found(server, sdk):
    with pytest.raises(openai.NotFoundError) as info:
        sdk(server).chat.completions.create(model="nope/nothing", messages=USER)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


class KeyAuth(Authenticator):
    name = "test-keys"

    def __init__(self):
        self.seen = []

    async def authenticate(self, credentials):
        self.seen.append(credentials)
        if credentials.kind in ("bearer", "api_key") and credentials.secret == "good":
            return Principal(id="alice")
        if credentials.kind in ("bearer", "api_key"):
            raise Unauthorized("unknown API key")
        return None


class AuthPlugin:
    __name__ = "test-auth"

    def __init__(self):
        self.auth = KeyAuth()

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(self.auth)


def test_authentication(serve, sdk):
    plugin = AuthPlugin()
    server = serve(plugins=[plugin])
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(server, api_key="bad").chat.completions.create(model="", messages=USER)
    assert info.value.body["type"] == "authentication_error"
    assert sdk(server, api_key="good").chat.completions.create(model="", messages=USER).choices
    # x-api-key (Axionic) wins over the SDK's dummy Bearer key
    client = sdk(server, api_key="dummy", default_headers={"x-api-key": "good"})
    assert client.chat.completions.create(model="", messages=USER).choices
    kinds = [(c.kind, c.secret, c.wire_format) for c in plugin.auth.seen]
    assert kinds == [("bearer", "bad", "openai"), ("bearer", "good", "openai"), ("api_key", "good", "openai")]
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert plugin.auth.seen[-1].kind == "none"
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": USER},
                   headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401
    assert "Bearer" in r.json()["error"]["message"]


def test_queue_full_is_rate_limit_error(serve, sdk):
    import threading

    backend = ScriptedBackend(delay_s=0.2)
    server = serve(backend, settings={"queue": {"max_waiting": 0}})
    client = sdk(server)
    done = []
    t = threading.Thread(target=lambda: done.append(client.chat.completions.create(model="", messages=USER)))
    t.start()
    assert backend.running.wait(5)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="", messages=USER)
    assert info.value.code == "server_busy"
    assert int(info.value.response.headers["retry-after"]) >= 1
    # streaming requests get the real status too, not a 200 with an error inside
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="", messages=USER, stream=True)
    t.join(10)
    assert done and done[0].choices[0].message.content == "Hello, world!"


def test_queue_timeout_is_503(serve, sdk):
    import threading

    backend = ScriptedBackend(delay_s=0.5)
    server = serve(backend, settings={"queue": {"max_wait_s": 0.2}})
    client = sdk(server)
    t = threading.Thread(target=lambda: client.chat.completions.create(model="", messages=USER))
    t.start()
    assert backend.running.wait(5)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="", messages=USER, stream=stream)
        assert info.value.status_code == 503
        assert info.value.body["type"] == "service_unavailable"
        assert int(info.value.response.headers["retry-after"]) >= 1
    t.join(10)


class QuotaLimiter(Limiter):
    name = "test-quota"

    def __init__(self, allowed):
        self.allowed = allowed
        self.settled = []

    async def reserve(self, principal, cost):
        if self.allowed <= 0:
            raise RateLimited("daily request quota spent", should_retry=False, retry_after=3600,
                              headers={"x-ratelimit-remaining-requests": "0"})
        self.allowed -= 1
        return Reservation(principal, cost, headers={"x-ratelimit-limit-requests": "2",
                                                     "x-ratelimit-remaining-requests": str(self.allowed)})

    async def settle(self, reservation, usage, outcome):
        self.settled.append((usage.completion_tokens, outcome))


class LimiterPlugin:
    __name__ = "test-limits"

    def __init__(self, limiter):
        self.limiter = limiter

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


def test_rate_limit_headers_pass_through(serve, sdk):
    limiter = QuotaLimiter(2)
    server = serve(plugins=[LimiterPlugin(limiter)])
    client = sdk(server)
    raw = client.chat.completions.with_raw_response.create(model="", messages=USER)
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-request-id"]
    with client.chat.completions.with_streaming_response.create(model="", messages=USER, stream=True) as r:
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        r.read()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="", messages=USER)
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["retry-after"] == "3600"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.body["type"] == "rate_limit_error"
    assert limiter.settled == [(4, "ok"), (4, "ok")]


def test_context_too_long(serve, sdk):
    server = serve(ScriptedBackend(context_length=8))
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model="", messages=USER, max_tokens=100)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(
            model="", messages=[{"role": "user", "content": "word " * 20}])
    assert info.value.code == "context_length_exceeded"


def test_response_format_without_guided_plugin_is_refused(server, sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model="", messages=USER, response_format={"type": "json_object"})
    assert info.value.code == "unsupported_constraint"
    assert "json_object" in info.value.body["message"]
    # text is the default, nothing to enforce
    assert sdk(server).chat.completions.create(model="", messages=USER, response_format={"type": "text"}).choices


def test_policy_without_guided_plugin_is_refused(server, sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model="", messages=USER, extra_body={"policy_id": "p1"})
    assert info.value.body["param"] == "policy_id"


def test_mid_stream_error_is_sent_in_band(serve, sdk):
    class Exploding(ScriptedBackend):
        def generate(self, prompt, step, max_tokens, cancelled):
            it = super().generate(prompt, step, max_tokens, cancelled)
            yield next(it)
            raise RuntimeError("the GPU caught fire")

    server = serve(Exploding())
    body = {"messages": USER, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    error = json.loads(events[-1][6:])
    assert error["error"]["type"] == "server_error"
    assert "[DONE]" not in raw
    with pytest.raises(openai.APIError):
        for _ in sdk(server).chat.completions.create(model="", messages=USER, stream=True):
            pass
    # non-streaming: a 500 in OpenAI shape, never a traceback
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "Traceback" not in r.text
