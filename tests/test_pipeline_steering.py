"""The hidden-state and steering abilities of a backend: a request's
``steering`` / ``observer`` reach ``generate`` only on a backend that
declares it honours them (400 naming the model otherwise, before anything is
counted), and ``kernel.pipeline.hidden_states`` takes the embeddings path."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import AuthLimitPlugin, LedgerLimiter, kernel_of

from adyton import Credentials, GenerationRequest, HiddenStateObserver, InvalidRequest, Steering, hookimpl
from adyton.testing import ScriptedBackend

KEY = Credentials(kind="api_key", secret="good", wire_format="test")


class Steerable(ScriptedBackend):
    """Four layers of 3 values: layer l of token i is (i, l, strength)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def hidden_layers(self, model):
        return (4, 3)

    def steering_layers(self, model):
        return range(1, 4)

    def hidden_states(self, model, inputs, layers, cancelled):
        return [{layer: np.array([[i, layer, 0] for i in range(len(ids))], np.float32) for layer in layers}
                for ids in inputs]

    def generate(self, prompt, step, max_tokens, cancelled):
        self.seen.append((prompt.steering, prompt.observer))
        strength = prompt.steering.strength if prompt.steering is not None else 0.0
        for n, piece in enumerate(super().generate(prompt, step, max_tokens, cancelled)):
            if prompt.observer is not None:
                prompt.observer.callback(n, piece.token_id, {layer: np.array([n, layer, strength], np.float32)
                                                             for layer in prompt.observer.layers})
            yield piece


class SteerPlugin:
    """Sets ``steering`` / ``observer`` from test-only extension fields."""

    __name__ = "steer-test"

    def __init__(self):
        self.observed = []

    @hookimpl
    def prepare_request(self, request, principal, kernel):
        spec = request.extra.pop("steer", None)
        if spec is not None:
            request.steering = Steering(model=spec["model"], vectors={spec["layer"]: np.ones(3, np.float32)},
                                        strength=2.0, source="steer")
        layers = request.extra.pop("observe", None)
        if layers is not None:
            request.observer = HiddenStateObserver(tuple(layers), lambda *a: self.observed.append(a))


async def _run(app, **extra):
    kernel = kernel_of(app)
    generation = await kernel.pipeline.submit(
        GenerationRequest(prompt="hi", model="scripted-model", max_tokens=3, extra=extra), KEY)
    return await generation.result()


@pytest.mark.parametrize("backend,extra,message", [
    (ScriptedBackend(), {"steer": {"model": "scripted-model", "layer": 1}},
     "model 'scripted-model' (backend 'scripted') cannot be steered"),
    (ScriptedBackend(), {"observe": [1]}, "model 'scripted-model' (backend 'scripted') does not expose hidden"),
    (Steerable(), {"steer": {"model": "other-model", "layer": 1}}, "made for model 'other-model'"),
    (Steerable(), {"steer": {"model": "scripted-model", "layer": 0}}, "cannot be steered at layer(s) 0"),
    (Steerable(), {"observe": [4]}, "has 4 layers; layer(s) 4 do not exist"),
])
async def test_refused_before_anything_is_counted(make_app, backend, extra, message):
    limiter = LedgerLimiter()
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter), SteerPlugin()])
    async with app.test_app():
        with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
            await _run(app, **extra)
    assert limiter.reserved == [] and limiter.settled == []


async def test_honoured_steering_and_observer_reach_generate(make_app):
    backend, plugin = Steerable(), SteerPlugin()
    app = make_app(backend, plugins=[AuthLimitPlugin(LedgerLimiter()), plugin])
    async with app.test_app():
        result = await _run(app, steer={"model": "scripted-model", "layer": 2}, observe=[1, 3])
        plain = await _run(app)
    steering, observer = backend.seen[0]
    assert steering.strength == 2.0 and set(steering.vectors) == {2}
    assert observer.layers == (1, 3)
    assert [n for n, _, _ in plugin.observed] == [0, 1, 2]
    assert plugin.observed[0][2][3].tolist() == [0, 3, 2.0]
    assert backend.seen[1] == (None, None)  # nothing leaks into the next request
    assert result.choices[0].text == plain.choices[0].text


async def test_hidden_states_take_the_embeddings_path(make_app):
    limiter = LedgerLimiter()
    app = make_app(Steerable(), plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        model, states, usage = await kernel_of(app).pipeline.hidden_states(["hi there", "hi"], [1, 2],
                                                                           "scripted-model", KEY)
        with pytest.raises(InvalidRequest, match="has 4 layers"):
            await kernel_of(app).pipeline.hidden_states(["hi"], [7], "scripted-model", KEY)
    assert model.id == "scripted-model" and len(states) == 2
    assert states[0][2].shape[1] == 3 and states[0][2][:, 1].tolist() == [2] * states[0][2].shape[0]
    assert usage.prompt_tokens == states[0][1].shape[0] + states[1][1].shape[0]
    assert limiter.settled == [("acct-1", usage.prompt_tokens, 0, "ok")]


async def test_hidden_states_on_a_backend_without_them_is_a_400(make_app):
    app = make_app(ScriptedBackend(), plugins=[AuthLimitPlugin(LedgerLimiter())])
    async with app.test_app():
        with pytest.raises(InvalidRequest, match="does not expose hidden states"):
            await kernel_of(app).pipeline.hidden_states(["hi"], [1], "scripted-model", KEY)
