"""A second architecture (Gemma 3 270M, 640-dimensional states) next to the
default model: a vector is for the model it was made with, and steering
works on Gemma too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from steer_helpers import MODEL, generate, post, start_server

from adyton.settings import default_home
from adyton.testing import require_model

GEMMA = "gemma-3-270m"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    gemma = Path(os.environ.get("ADYTON_TEST_MODEL_GEMMA3")
                 or Path(os.environ.get("ADYTON_HOME") or default_home()) / "test-models" / "gemma-3-270m-q4_k_m.gguf")
    gemma = require_model(gemma, "set ADYTON_TEST_MODEL_GEMMA3, or run: make test-models")
    models = tmp_path_factory.mktemp("models")
    (models / gemma.name).symlink_to(gemma.resolve())
    server = start_server(models, tmp_path_factory.mktemp("home"))
    yield server
    server.stop()


def test_a_vector_is_for_its_own_model(srv):
    pairs = {"positive": ["A lovely, happy day."], "negative": ["An awful, sad day."], "layers": [6]}
    smol = post(srv, "/v1/steering_vectors", {"model": MODEL, **pairs})
    gemma = post(srv, "/v1/steering_vectors", {"model": GEMMA, **pairs})
    assert smol.status_code == 201 and gemma.status_code == 201, (smol.text, gemma.text)
    assert smol.json()["dimensions"] == 576 and gemma.json()["dimensions"] == 640
    r = post(srv, "/t/generate", {"model": GEMMA, "prompt": "Hi", "max_tokens": 2,
                                  "extra": {"steering_vector_id": smol.json()["id"]}})
    assert r.status_code == 400
    assert f"made for model '{MODEL}', not '{GEMMA}'" in r.json()["err"]["message"]
    body = {"model": GEMMA, "prompt": "The weather today is", "max_tokens": 12}
    plain = generate(srv, **body)
    assert generate(srv, **body, extra={"steering_vector_id": gemma.json()["id"], "steering_strength": 0}) == plain
    assert generate(srv, **body, extra={"steering_vector_id": gemma.json()["id"], "steering_strength": 8}) != plain
