"""The kernel contract for self-sampling backends (``Backend.exposes_logits =
False``): check_sampling at admission, SamplingParams per choice, logprobs and
usage and reports from the engine's pieces, Started only at the first piece (so an error
before it keeps its HTTP status), and no charge for a request that failed
before its engine answered."""

from __future__ import annotations

import json

import pytest

from adyton import (
    BadGateway,
    FinishReason,
    InvalidRequest,
    ModelInfo,
    PreparedPrompt,
    SamplingParams,
    ServiceUnavailable,
    TokenLogprob,
    TokenPiece,
    Usage,
)
from adyton.hookspecs import Backend, Limiter, hookimpl
from adyton.types import Reservation


class EchoEngine(Backend):
    """Samples "itself": yields the words of ``script`` as pieces, then a
    STOP piece carrying the engine's own usage; or raises ``fail``."""

    name = "selfsampling"
    exposes_logits = False

    def __init__(self, script=("Hel", "lo", "!"), fail=None, refuse_logprobs=False):
        self.script = list(script)
        self.fail = fail
        self.refuse_logprobs = refuse_logprobs
        self.params: list[SamplingParams] = []

    def list_models(self):
        return [ModelInfo(id="remote-model", context_length=1000)]

    def loaded_model(self):
        return "remote-model"

    def load_model(self, model_id):
        pass

    def prepare(self, request, model):
        # an upper-bound estimate, as a remote engine's backend would make
        return PreparedPrompt(model=model, token_ids=[0] * 50, text="", context_length=1000)

    def check_sampling(self, request, model):
        if request.logprobs is not None and self.refuse_logprobs:
            raise InvalidRequest(f"model '{model.id}' cannot give logprobs", param="logprobs")
        if request.constraints:
            super().check_sampling(request, model)

    def generate(self, prompt, step, max_tokens, cancelled):
        assert isinstance(step, SamplingParams)
        self.params.append(step)
        if self.fail is not None:
            raise self.fail
        for word in self.script:
            lp = [TokenLogprob(word, -0.5, list(word.encode()))] if step.request.logprobs is not None else None
            yield TokenPiece(-1, word, logprobs=lp)
        yield TokenPiece(-1, "", FinishReason.STOP, usage=Usage(prompt_tokens=7, completion_tokens=4),
                         reports={"echo": {"verified": True}})


class Recorder(Limiter):
    name = "recorder"

    def __init__(self):
        self.settled: list[tuple[Usage, str]] = []

    async def reserve(self, principal, cost):
        return Reservation(principal=principal, cost=cost)

    async def settle(self, reservation, usage, outcome):
        self.settled.append((usage, outcome))


class LimiterPlugin:
    __name__ = "recorder-plugin"

    def __init__(self, limiter):
        self.limiter = limiter

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


async def _post(app, body):
    async with app.test_app() as test_app:
        r = await test_app.test_client().post("/t/generate", json=body)
        return r.status_code, r.headers, await r.get_data(as_text=True)


async def test_sampling_params_usage_and_logprobs_come_from_the_engine(make_app):
    engine, limiter = EchoEngine(), Recorder()
    app = make_app(engine, plugins=[LimiterPlugin(limiter)])
    status, _, text = await _post(app, {"prompt": "hi", "n": 2, "seed": 10, "temperature": 0.3,
                                        "logprobs": 0})
    assert status == 200, text
    body = json.loads(text)
    assert [c["text"] for c in body["choices"]] == ["Hello!", "Hello!"]
    assert body["choices"][0]["logprobs"] == [-0.5, -0.5, -0.5]
    assert body["choices"][1]["reports"] == {"echo": {"verified": True}}  # the engine's report
    # the engine's count replaces the kernel's piece count and the prompt estimate
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    assert [(p.seed, p.index, p.request.temperature) for p in engine.params] == [(10, 0, 0.3), (11, 1, 0.3)]
    assert limiter.settled == [(Usage(prompt_tokens=7, completion_tokens=8), "ok")]


async def test_check_sampling_refuses_before_anything_is_counted(make_app):
    engine, limiter = EchoEngine(refuse_logprobs=True), Recorder()
    app = make_app(engine, plugins=[LimiterPlugin(limiter)])
    status, _, text = await _post(app, {"prompt": "hi", "logprobs": 2})
    assert status == 400 and "remote-model" in text
    status, _, text = await _post(app, {"prompt": "hi", "constraints": [{"kind": "regex", "value": "a+"}]})
    assert status == 400 and "remote-model" in text and "constraints" in text
    assert engine.params == [] and limiter.settled == []


def test_default_check_sampling_refuses_what_needs_logits():
    from adyton import GenerationRequest, UnsupportedConstraint

    engine = EchoEngine()
    model = engine.list_models()[0]
    Backend.check_sampling(engine, GenerationRequest(prompt="x"), model)  # nothing to refuse
    for extra in ({"logprobs": 0}, {"logit_bias": {"5": 1.0}}, {"constraints": [{"kind": "json_object"}]}):
        with pytest.raises(UnsupportedConstraint, match="remote-model"):
            Backend.check_sampling(engine, GenerationRequest(prompt="x", **extra), model)


@pytest.mark.parametrize("error, status", [
    (ServiceUnavailable("every replica of model 'remote-model' is down", retry_after=7), 503),
    (BadGateway("the upstream of model 'remote-model' answered garbage"), 502),
])
async def test_an_error_before_the_first_piece_keeps_its_status_when_streaming(make_app, error, status):
    engine, limiter = EchoEngine(fail=error), Recorder()
    app = make_app(engine, plugins=[LimiterPlugin(limiter)])
    got, headers, text = await _post(app, {"prompt": "hi", "stream": True})
    assert got == status, text
    assert "remote-model" in text
    if status == 503:
        assert headers["Retry-After"] == "7"
    # the engine never answered: nothing is charged
    assert limiter.settled == [(Usage(), "error")]


async def test_streaming_starts_at_the_first_piece(make_app):
    engine = EchoEngine()
    app = make_app(engine)
    status, _, text = await _post(app, {"prompt": "hi", "stream": True})
    lines = [json.loads(line) for line in text.splitlines()]
    assert status == 200
    assert "".join(x.get("text", "") for x in lines) == "Hello!"
    assert lines[-1] == {"usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}


async def test_the_kernel_reads_on_to_the_engine_count_past_max_tokens_pieces(make_app):
    # pieces are not tokens: with max_tokens=2 the engine's two pieces are
    # followed by its finish piece carrying the real count, which must be read
    engine, limiter = EchoEngine(script=("Hel", "lo")), Recorder()
    app = make_app(engine, plugins=[LimiterPlugin(limiter)])
    status, _, text = await _post(app, {"prompt": "hi", "max_tokens": 2})
    assert status == 200, text
    assert json.loads(text)["usage"]["prompt_tokens"] == 7
    assert limiter.settled == [(Usage(prompt_tokens=7, completion_tokens=4), "ok")]


class UncountedEngine(EchoEngine):
    """An engine that reports no usage (llama-cpp-python's server streams
    none) and ends a choice cut at max_tokens with an empty "length" piece."""

    def generate(self, prompt, step, max_tokens, cancelled):
        for word in self.script[:max_tokens]:
            yield TokenPiece(-1, word)
        yield TokenPiece(-1, "", FinishReason.LENGTH)


async def test_an_empty_closing_piece_is_not_counted_as_a_token(make_app):
    engine, limiter = UncountedEngine(script=("Hel", "lo", "!")), Recorder()
    app = make_app(engine, plugins=[LimiterPlugin(limiter)])
    status, _, text = await _post(app, {"prompt": "hi", "max_tokens": 2})
    assert status == 200, text
    assert json.loads(text)["usage"]["completion_tokens"] == 2
    assert json.loads(text)["choices"][0]["finish_reason"] == "length"
    assert limiter.settled == [(Usage(prompt_tokens=50, completion_tokens=2), "ok")]


def test_sampling_params_is_not_a_step_function():
    from adyton import GenerationRequest

    with pytest.raises(TypeError, match="self-sampling"):
        SamplingParams(GenerationRequest(prompt="x"))(None)
