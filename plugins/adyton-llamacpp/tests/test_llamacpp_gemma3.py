"""A second architecture (Gemma 3 270M, Q4_K_M: another family, tokenizer and
quantization than SmolLM2's) served by the llamacpp backend, and model
switching with several slots: concurrent requests for two models with
different weights each get exactly their own model's answer."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
from llamacpp_helpers import GEMMA, SMOL, chat, generate, require_gemma, start_server, stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, models_dir):
    gemma = require_gemma()
    (models_dir / gemma.name).symlink_to(gemma.resolve())
    srv = start_server(tmp_path_factory.mktemp("home"), models_dir, slots=2, slot_context=256)
    yield srv
    srv.stop()


def test_gemma3_is_listed_and_served(two_models):
    infos = {m.id: m for m in two_models.backend.list_models()}
    assert set(infos) == {SMOL, GEMMA}
    assert infos[GEMMA].quantization == "Q4_K_M"
    assert infos[GEMMA].context_length == 256  # capped by the slot
    r = generate(two_models, {"model": GEMMA, "prompt": "Monday, Tuesday, Wednesday,", "max_tokens": 4})
    assert r["status"] == 200, r
    assert r["model"] == GEMMA and r["usage"]["completion_tokens"] > 0
    assert r["choices"][0]["text"].startswith(" Thursday"), r  # a working model, not noise
    _text, lines = stream(two_models, {"model": GEMMA, "messages": chat("Say hello."), "max_tokens": 6})
    assert lines[-1]["usage"]["completion_tokens"] > 0
    assert two_models.backend.loaded_model() == GEMMA


def test_concurrent_requests_for_two_models_each_run_on_their_own_weights(two_models):
    bodies = [{"model": m, "prompt": p, "max_tokens": 12}
              for m in (SMOL, GEMMA) for p in ("Once upon a time", "The best way to learn is")]
    solo = [generate(two_models, b)["choices"][0]["text"] for b in bodies]
    assert solo[0] != solo[2]  # the two models really differ
    order = [0, 2, 1, 3, 2, 0, 3, 1]  # alternate models, so every pair of slots must switch
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: generate(two_models, bodies[i]), order))
    for i, r in zip(order, results, strict=True):
        assert r["status"] == 200, r
        assert r["model"] == bodies[i]["model"]
        assert r["choices"][0]["text"] == solo[i], (bodies[i], r["choices"][0]["text"], solo[i])
    backend = two_models.backend
    assert backend._leases == 0 and not backend._switching and not backend._loading
