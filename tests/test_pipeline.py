"""The request path end to end with Quart's test client."""

from __future__ import annotations

import asyncio
import json

import pytest
from kernel_helpers import AuthLimitPlugin

from adyton import (
    Credentials,
    GenerationRequest,
    Limiter,
    LogitsProcessor,
    RateLimited,
    Reservation,
    hookimpl,
)
from adyton.testing import ScriptedBackend

CHAT = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}


async def call(app, body, headers=None):
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/t/generate", json=body, headers=headers or {})
        return r.status_code, await r.get_json(), r.headers


async def test_stop_string_split_across_tokens(make_app):
    backend = ScriptedBackend(["The", " an", "sw", "er", " is", " 4", "2", "."])
    status, body, _ = await call(make_app(backend), {**CHAT, "stop": ["swer is"]})
    assert status == 200
    assert body["choices"][0]["text"] == "The an"
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_streamed_stop_string_is_never_emitted_partially(make_app):
    backend = ScriptedBackend(["a", "<", "/", "s", ">", "b"])
    app = make_app(backend)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/t/generate", json={**CHAT, "stream": True, "stop": ["</s>"]})
        lines = [json.loads(x) for x in (await r.get_data(as_text=True)).splitlines()]
    texts = [x["text"] for x in lines if "text" in x]
    assert "".join(texts) == "a"
    assert all("<" not in t for t in texts)
    assert {"index": 0, "finish": "stop"} in lines


async def test_max_tokens_gives_length(make_app):
    _status, body, _ = await call(make_app(), {**CHAT, "max_tokens": 2})
    assert body["choices"][0] == {"text": "Hello,", "finish_reason": "length", "logprobs": None, "reports": {}}
    assert body["usage"]["completion_tokens"] == 2


async def test_n_choices_and_seeded_sampling(make_app):
    backend = ScriptedBackend(["x"] * 8, extra_vocab=["y", "z", "w"])
    app = make_app(backend)
    body = {**CHAT, "temperature": 2.0, "n": 3, "seed": 11, "max_tokens": 8, "logit_bias": {"0": -100}}
    _, first, _ = await call(app, body)
    _, again, _ = await call(app, body)
    assert len(first["choices"]) == 3
    assert first == again
    assert first["usage"]["completion_tokens"] == 24


async def test_logprobs_are_returned(make_app):
    _, body, _ = await call(make_app(), {**CHAT, "logprobs": 2})
    lps = body["choices"][0]["logprobs"]
    assert len(lps) == 4 and all(lp <= 0 for lp in lps)


async def test_context_too_long(make_app):
    backend = ScriptedBackend(context_length=8)
    status, body, _ = await call(make_app(backend), {"prompt": "one two three four five", "max_tokens": 10})
    assert status == 400 and body["err"]["code"] == "context_length_exceeded"
    status, body, _ = await call(make_app(backend), {"prompt": " ".join(["w"] * 20)})
    assert status == 400 and body["err"]["code"] == "context_length_exceeded"


async def test_fit_context_lowers_max_tokens_instead_of_refusing(make_app):
    backend = ScriptedBackend(["a", "b", "c", "d", "e"], context_length=8, eos_at_end=False)
    # 5 prompt tokens leave 3: a cap of 10 becomes 3 (not a 400), a cap of 2 stays 2
    status, body, _ = await call(make_app(backend), {"prompt": "one two three four five", "max_tokens": 10,
                                                     "fit_context": True})
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    status, body, _ = await call(make_app(backend), {"prompt": "one two three four five", "max_tokens": 2,
                                                     "fit_context": True})
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    # a prompt that leaves no room is still refused
    status, body, _ = await call(make_app(backend), {"prompt": " ".join(["w"] * 8), "max_tokens": 4,
                                                     "fit_context": True})
    assert status == 400 and body["err"]["code"] == "context_length_exceeded"


async def test_unclaimed_constraint_is_refused(make_app):
    body = {**CHAT, "constraints": [{"kind": "json_object", "source": "response_format"}]}
    status, out, _ = await call(make_app(), body)
    assert status == 400
    assert out["err"]["code"] == "unsupported_constraint"
    assert "response_format" in out["err"]["message"]


async def test_unhandled_extension_parameter_is_refused(make_app):
    status, out, _ = await call(make_app(), {**CHAT, "extra": {"policy": {"x": 1}}})
    assert status == 400 and "'policy'" in out["err"]["message"]


class Forbid(LogitsProcessor):
    """Bans one token and claims the request's choice constraint."""

    name = "forbid"

    def __init__(self, banned, constraint):
        self.banned = banned
        self.handles = [constraint]
        self.seen = []

    def process(self, generated, logits):
        logits[self.banned] = float("-inf")

    def accept(self, token_id):
        self.seen.append(token_id)

    def response_headers(self):
        return {"x-test-processor": "on"}

    def report(self, text, finish_reason):
        return {"text": text, "finish": finish_reason.value}


class ForbidPlugin:
    __name__ = "forbid"

    @hookimpl
    def logits_processors(self, request, model, vocabulary, kernel):
        for c in request.constraints:
            if c.kind == "choice":
                banned = vocabulary.encode(c.value[0])
                return Forbid(banned, c)
        return None


async def test_logits_processor_claims_and_changes_output(make_app):
    backend = ScriptedBackend(["Hello", " world"], extra_vocab=["Bye"])
    app = make_app(backend, plugins=[ForbidPlugin()])
    body = {**CHAT, "constraints": [{"kind": "choice", "value": [" world"]}]}
    status, out, headers = await call(app, body)
    assert status == 200, out
    assert headers["x-test-processor"] == "on"
    choice = out["choices"][0]
    assert " world" not in choice["text"]
    assert choice["reports"]["forbid"]["text"] == choice["text"]


class CountingLimiter(Limiter):
    name = "counting"

    def __init__(self, limit):
        self.limit = limit
        self.active = 0
        self.settled = []

    async def reserve(self, principal, cost):
        if self.active >= self.limit:
            raise RateLimited("too many", retry_after=3, headers={"x-ratelimit-remaining-requests": "0"})
        self.active += 1
        return Reservation(principal, cost, headers={"x-ratelimit-remaining-requests": str(self.limit - self.active)})

    async def settle(self, reservation, usage, outcome):
        self.active -= 1
        self.settled.append((reservation.principal.id, usage.completion_tokens, outcome))


async def test_auth_and_limits(make_app):
    limiter = CountingLimiter(limit=1)
    app = make_app(plugins=[AuthLimitPlugin(limiter)])
    status, out, _ = await call(app, CHAT)
    assert status == 401 and out["err"]["code"] == "missing_api_key"
    status, out, _ = await call(app, CHAT, {"x-key": "bad"})
    assert status == 401 and out["err"]["message"] == "unknown key"
    status, out, headers = await call(app, CHAT, {"x-key": "good"})
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limiter.settled == [("acct-1", 4, "ok")]
    limiter.active = 1  # the account is at its limit
    status, out, headers = await call(app, CHAT, {"x-key": "good"})
    assert status == 429 and headers["Retry-After"] == "3"


async def test_refused_after_reservation_is_settled_as_rejected(make_app):
    limiter = CountingLimiter(limit=5)
    backend = ScriptedBackend(["a"] * 20, delay_s=0.02)
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter)], settings={"queue": {"max_waiting": 0}})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        while app.extensions["adyton"].models.loading:  # the model load holds the engine first
            await asyncio.sleep(0.005)
        first = asyncio.ensure_future(client.post("/t/generate", json=CHAT, headers={"x-key": "good"}))
        for _ in range(1000):
            if backend.running.is_set():
                break
            await asyncio.sleep(0.005)
        r = await client.post("/t/generate", json=CHAT, headers={"x-key": "good"})
        assert r.status_code == 429 and (await r.get_json())["err"]["code"] == "server_busy"
        assert limiter.active == 1  # only the running request holds a reservation
        assert (await first).status_code == 200
    assert limiter.active == 0
    assert [s[2] for s in limiter.settled] == ["ok"]


async def test_models_aliases_and_switching(make_app):
    backend = ScriptedBackend(models=["m-one", "m-two"])
    app = make_app(backend, settings={"models": {"aliases": {"qwen3_4b": "m-two"}, "default": "m-one"}})
    status, out, _ = await call(app, CHAT)
    assert status == 200 and out["model"] == "m-one"
    status, out, _ = await call(app, {**CHAT, "model": "qwen3_4b"})
    assert status == 200 and out["model"] == "m-two"
    assert backend.loaded_model() == "m-two"
    status, out, _ = await call(app, {**CHAT, "model": "test/m-one"})
    assert status == 200 and out["model"] == "m-one"
    status, out, _ = await call(app, {**CHAT, "model": "nope"})
    assert status == 404 and out["err"]["code"] == "model_not_found"
    assert "m-one" in out["err"]["message"] and "qwen3_4b" in out["err"]["message"]


async def test_no_model_loaded_is_503(make_app):
    backend = ScriptedBackend()
    app = make_app(backend, settings={"models": {"load_at_start": False}})
    status, out, _headers = await call(app, CHAT)
    assert status == 503 and out["err"]["code"] == "no_model_loaded"
    assert "scripted-model" in out["err"]["message"]


async def test_backend_failure_is_a_clean_500(make_app):
    class Broken(ScriptedBackend):
        def generate(self, *a, **kw):
            raise RuntimeError("engine on fire")
            yield

    status, out, _ = await call(make_app(Broken()), CHAT)
    assert status == 500
    assert out["err"]["type"] == "server_error"
    assert "engine on fire" in out["err"]["message"]


async def test_bad_json_and_unknown_routes_render_in_the_right_shape(make_app):
    app = make_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/t/generate", data=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "err" in await r.get_json()
        r = await client.get("/t/nope")
        assert r.status_code == 404 and "err" in await r.get_json()
        r = await client.get("/elsewhere")
        assert r.status_code == 404 and (await r.get_json())["error"]["code"] == "not_found"
        r = await client.post("/t/generate", data=b"x" * (5 * 1024 * 1024),
                              headers={"content-type": "application/json"})
        assert r.status_code == 413 and (await r.get_json())["err"]["code"] == "request_too_large"


async def test_event_channel_never_swallows_a_cancellation():
    """A consumer cancelled in the same loop pass as an event arrives (a
    streaming client that goes away mid-generation) must end cancelled:
    asyncio.wait_for on Python 3.11 would return the event instead, and the
    stream would go on for nobody."""
    from adyton.channel import _Channel

    channel = _Channel(asyncio.get_running_loop())
    consumer = asyncio.ensure_future(channel.get(timeout=5.0))
    await asyncio.sleep(0)  # the consumer is now waiting
    channel.put("token")
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    # the event is still there for whoever reads next; a quiet channel times out
    assert await channel.get(timeout=1.0) == "token"
    with pytest.raises(asyncio.TimeoutError):
        await channel.get(timeout=0.01)


async def test_aclose_passes_on_its_callers_cancellation_and_still_settles(make_app):
    """A caller cancelled while aclose() waits for the engine to let go ends
    cancelled (aclose must not swallow it); the generation stops and settles
    on its own."""
    backend = ScriptedBackend(["a"] * 100, delay_s=0.2)
    limiter = CountingLimiter(limit=5)
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        kernel = app.extensions["adyton"]
        generation = await kernel.pipeline.submit(
            GenerationRequest(prompt="hi", max_tokens=50), Credentials(kind="api_key", secret="good"))
        while not backend.running.is_set():
            await asyncio.sleep(0.01)
        closer = asyncio.ensure_future(generation.aclose())
        await asyncio.sleep(0.02)  # aclose() is now waiting for the engine's next step
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        done, _ = await asyncio.wait([generation._task], timeout=5)  # (it ends cancelled, settled)
        assert done
        assert not backend.running.is_set()
        assert generation.usage.completion_tokens < 50
    assert limiter.active == 0
    assert limiter.settled == [("acct-1", generation.usage.completion_tokens, "cancelled")]
