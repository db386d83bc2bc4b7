"""The generation loop's own cut-offs: a time budget (``time_budget_s``) and a
degenerate-repetition stop (``stop_repetition``), both request fields that
wire formats set from their settings. Each ends a choice cleanly with the
text produced so far and finish_reason "length", and charges what was
produced."""

import pytest

from adyton.sampling import REPETITION_MIN_SPAN, RepetitionGuard
from adyton.testing import ScriptedBackend


def _first_loop(tokens, repeats=4):
    guard = RepetitionGuard(repeats)
    for i, token in enumerate(tokens):
        if guard.feed(token):
            return i + 1
    return None


def test_repetition_guard_finds_loops_of_any_period():
    assert _first_loop([7] * 100) == REPETITION_MIN_SPAN
    assert _first_loop(list(range(10)) * 10) == 40  # period 10, 4 repeats
    assert _first_loop(list(range(50)) * 5) == 200  # period 50, 4 repeats
    assert _first_loop(list(range(500))) is None  # no repeat at all
    assert _first_loop([1, 2] * 15) is None  # "ha ha ha": under the minimum span
    # a loop that is broken once starts counting again
    assert _first_loop([1, 2, 3] * 9 + [9] + [1, 2, 3] * 9) is None


SENTENCE = ["The", " cat", " sat", " on", " the", " mat", "."]


def _looping_backend(delay_s=0.0):
    # a "model" stuck in a loop: the script again and again, no end of sequence
    return ScriptedBackend(SENTENCE, eos_at_end=False, delay_s=delay_s)


async def _generate(app, body):
    async with app.test_app() as test_app:
        r = await test_app.test_client().post("/t/generate", json=body)
        assert r.status_code == 200, await r.get_data()
        return await r.get_json()


async def test_repetition_stop_ends_a_loop_early(make_app):
    body = {"prompt": "tell me", "temperature": 0, "max_tokens": 500, "stop_repetition": 4}
    out = await _generate(make_app(_looping_backend()), body)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    # a 7-token sentence: stopped once it repeated 4 times and 32 tokens
    assert out["usage"]["completion_tokens"] == 32
    assert choice["text"] == "".join(SENTENCE * 5)[:len("The cat sat on the mat.") * 4 + len("The cat sat on")]
    # without the field the loop runs to max_tokens
    del body["stop_repetition"]
    out = await _generate(make_app(_looping_backend()), body)
    assert out["usage"]["completion_tokens"] == 500


async def test_time_budget_ends_the_reply_with_what_was_produced(make_app):
    # 0.05 s a token: 400 tokens would take 20 s; the budget is 0.5 s
    app = make_app(_looping_backend(delay_s=0.05))
    body = {"prompt": "tell me", "temperature": 0, "max_tokens": 400, "time_budget_s": 0.5}
    out = await _generate(app, body)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    produced = out["usage"]["completion_tokens"]
    assert 1 <= produced < 400
    assert choice["text"] == "".join((SENTENCE * 60)[:produced])
    async with app.test_app() as test_app:
        metrics = await (await test_app.test_client().get("/metrics")).get_data(as_text=True)
    assert 'adyton_cut_short_total{reason="time_budget",wire_format="testwire"} 1.0' in metrics


@pytest.mark.parametrize("field, value", [("time_budget_s", 0), ("time_budget_s", -1), ("stop_repetition", 1)])
async def test_cutoff_fields_are_validated(make_app, field, value):
    async with make_app().test_app() as test_app:
        r = await test_app.test_client().post("/t/generate", json={"prompt": "x", field: value})
        assert r.status_code == 400
