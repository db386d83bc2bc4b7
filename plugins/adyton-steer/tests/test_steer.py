"""adyton-steer on the real default model, served by adyton-llamacpp.

One server for the module (the llama.cpp backend, adyton-steer, the kernel's
JSON test wire) with three API keys: two accounts and the admin."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from steer_helpers import ADMIN, MODEL, A, B, generate, post

import adyton_steer
from adyton import Database, GenerationRequest, Steering
from adyton_steer.store import write_control_vector
from adyton_steer.wire import contrastive_vectors

POSITIVE = ["I love this, it is wonderful and makes me happy.", "What a fantastic, delightful day!",
            "This is great, I am so pleased.", "The food was excellent and the staff were lovely.",
            "I feel joyful and grateful.", "Such a beautiful, amazing experience."]
NEGATIVE = ["I hate this, it is awful and makes me sad.", "What a terrible, miserable day!",
            "This is horrible, I am so disappointed.", "The food was disgusting and the staff were rude.",
            "I feel angry and bitter.", "Such an ugly, dreadful experience."]
#: held out: none of these words is in the pairs above
POSITIVE_WORDS = [" good", " nice", " perfect", " brilliant", " fun"]
NEGATIVE_WORDS = [" bad", " boring", " stupid", " poor", " sad"]
LAYERS = [10]


@pytest.fixture(scope="module")
def sentiment(srv) -> dict:
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "positive": POSITIVE, "negative": NEGATIVE,
                                          "layers": LAYERS, "pooling": "mean", "name": "sentiment"})
    assert r.status_code == 201, r.text
    return r.json()


def test_computed_vector_is_listed_with_model_layers_and_norm(srv, sentiment):
    assert sentiment["id"].startswith("sv_") and sentiment["model"] == MODEL
    assert sentiment["layers"] == LAYERS and sentiment["dimensions"] == 576
    assert sentiment["norms"]["10"] > 1
    listed = httpx.get(srv.base_url + "/v1/steering_vectors", headers=A).json()["data"]
    assert sentiment["id"] in [v["id"] for v in listed]
    shown = httpx.get(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}", headers=A).json()
    assert shown == sentiment


def test_the_vector_is_the_mean_difference_of_hidden_states(srv, sentiment):
    backend = srv.backend
    model = srv.kernel.models.resolve(MODEL)[1]
    tokens = [backend.prepare(GenerationRequest(prompt=t), model).token_ids for t in POSITIVE + NEGATIVE]
    states = backend.hidden_states(model, tokens, LAYERS, threading.Event())
    expected = contrastive_vectors(states[:6], states[6:], LAYERS, "mean")
    stored = adyton_steer.stores(srv.kernel).vectors.get_any(sentiment["id"])
    assert np.allclose(stored.vectors[10], expected[10], atol=1e-5)


def test_strength_zero_is_exactly_the_unsteered_output(srv, sentiment):
    plain = generate(srv, prompt="The weather today is", max_tokens=24)
    zero = generate(srv, prompt="The weather today is", max_tokens=24,
                    extra={"steering_vector_id": sentiment["id"], "steering_strength": 0})
    steered = generate(srv, prompt="The weather today is", max_tokens=24,
                       extra={"steering_vector_id": sentiment["id"], "steering_strength": 4})
    assert zero == plain
    assert steered != plain


def _word_logprobs(srv, vector_id: str, strength: float) -> tuple[float, float]:
    """Summed log-probability of the held-out positive and negative words at
    the next position after the prompt, steered as the server steers."""
    backend = srv.backend
    model = srv.kernel.models.resolve(MODEL)[1]
    prepared = backend.prepare(GenerationRequest(prompt="The weather today is"), model)
    vector = adyton_steer.stores(srv.kernel).vectors.get_any(vector_id)
    prepared.steering = Steering(model=MODEL, vectors=vector.vectors, strength=strength)
    seen = {}

    def step(logits):
        seen["lp"] = logits - np.logaddexp.reduce(logits.astype(np.float64))
        return int(np.argmax(logits))

    list(backend.generate(prepared, step, 1, threading.Event()))
    vocab = backend.vocabulary(model)
    def first(words):
        return [vocab.encode(w)[0] for w in words]
    return float(seen["lp"][first(POSITIVE_WORDS)].sum()), float(seen["lp"][first(NEGATIVE_WORDS)].sum())


def test_the_vector_moves_held_out_words_of_its_side(srv, sentiment):
    pos0, neg0 = _word_logprobs(srv, sentiment["id"], 0.0)
    pos_up, neg_up = _word_logprobs(srv, sentiment["id"], 1.5)
    pos_down, neg_down = _word_logprobs(srv, sentiment["id"], -1.5)
    assert pos_up > pos0 + 2.0, (pos0, pos_up)  # its side's words gain at least 2 nats
    assert neg_up < neg0 - 2.0, (neg0, neg_up)
    assert neg_down > neg0 + 2.0, (neg0, neg_down)  # and the other way round
    assert pos_down < pos0, (pos0, pos_down)


def test_isolation_a_steered_request_never_changes_a_concurrent_unsteered_one(srv, sentiment):
    """The steered request is held in the middle of its generation (control
    vector applied) while unsteered ones run from start to end: they equal
    their solo run."""
    messages = [{"role": "user", "content": "Write a short story about a dragon."}]
    solo = generate(srv, messages=messages, max_tokens=32)
    steered_solo = generate(srv, messages=messages, max_tokens=32,
                            extra={"steering_vector_id": sentiment["id"], "steering_strength": 6})
    assert steered_solo != solo
    held_before = len(srv.holds)
    with ThreadPoolExecutor(2) as pool:
        steered = pool.submit(generate, srv, messages=messages, max_tokens=32, user="hold",
                              extra={"steering_vector_id": sentiment["id"], "steering_strength": 6})
        deadline = time.monotonic() + 120
        while len(srv.holds) == held_before and time.monotonic() < deadline:
            time.sleep(0.01)
        hold = srv.holds[held_before]
        try:
            assert hold.reached.wait(120)  # the steered request is mid-generation
            assert [generate(srv, messages=messages, max_tokens=32) for _ in range(2)] == [solo, solo]
            assert not steered.done()  # it was held all along
        finally:
            hold.release.set()
        assert steered.result() == steered_solo


def test_bad_steering_parameters_are_400s_and_others_vectors_404(srv, sentiment):
    def err(headers=A, **extra):
        r = post(srv, "/t/generate", {"prompt": "Hi", "max_tokens": 2, "extra": extra}, headers)
        return r.status_code, r.json()["err"]

    status, body = err(steering_vector_id=sentiment["id"], steering_strength=11)
    assert status == 400 and "-10 to 10" in body["message"]
    assert err(steering_vector_id=sentiment["id"], steering_strength="1")[0] == 400
    assert err(steering_strength=1)[0] == 400
    status, body = err(headers=B, steering_vector_id=sentiment["id"])
    assert status == 404 and body["code"] == "steering_vector_not_found"
    assert httpx.get(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}", headers=B).status_code == 404
    assert sentiment["id"] not in [v["id"] for v in
                                   httpx.get(srv.base_url + "/v1/steering_vectors", headers=B).json()["data"]]
    assert httpx.delete(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}", headers=B).status_code == 404
    assert err(steering_vector_id="sv_nothere")[0] == 404


def test_sharing_is_admin_only(srv, sentiment):
    path = f"/v1/steering_vectors/{sentiment['id']}/share"
    assert post(srv, path, {"shared": True}, headers={}).status_code == 401
    assert post(srv, path, {"shared": True}, headers=A).status_code == 403
    r = post(srv, path, {"shared": True}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["shared"] is True
    try:
        assert httpx.get(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}", headers=B).status_code == 200
        generate(srv, headers=B, prompt="Hi", max_tokens=2, extra={"steering_vector_id": sentiment["id"]})
        assert httpx.delete(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}",
                            headers=B).status_code == 403  # shared with B, still A's
    finally:
        assert post(srv, path, {"shared": False}, headers=ADMIN).status_code == 200
    assert httpx.get(srv.base_url + f"/v1/steering_vectors/{sentiment['id']}", headers=B).status_code == 404


def test_gguf_upload_round_trip(srv, sentiment, tmp_path):
    """A control vector written as llama.cpp writes one, computed in-process
    from the same pairs: upload, list, use (same tokens as the server's own
    vector), download, delete."""
    backend = srv.backend
    model = srv.kernel.models.resolve(MODEL)[1]
    tokens = [backend.prepare(GenerationRequest(prompt=t), model).token_ids for t in POSITIVE + NEGATIVE]
    states = backend.hidden_states(model, tokens, LAYERS, threading.Event())
    path = tmp_path / "sentiment.gguf"
    write_control_vector(path, contrastive_vectors(states[:6], states[6:], LAYERS, "mean"), "llama")
    data = path.read_bytes()
    with path.open("rb") as f:  # multipart, as curl -F file=@... sends it
        r = httpx.post(srv.base_url + "/v1/steering_vectors", headers=A, timeout=60,
                       files={"file": ("sentiment.gguf", f)}, data={"model": MODEL, "name": "uploaded"})
    assert r.status_code == 201, r.text
    uploaded = r.json()
    assert uploaded["method"] == "upload" and uploaded["layers"] == LAYERS
    assert uploaded["model_hint"] == "llama"
    assert abs(uploaded["norms"]["10"] - sentiment["norms"]["10"]) < 1e-3
    assert uploaded["id"] in [v["id"] for v in httpx.get(srv.base_url + "/v1/steering_vectors",
                                                         headers=A).json()["data"]]
    body = {"prompt": "The weather today is", "max_tokens": 16}
    ours = generate(srv, **body, extra={"steering_vector_id": sentiment["id"], "steering_strength": 3})
    theirs = generate(srv, **body, extra={"steering_vector_id": uploaded["id"], "steering_strength": 3})
    assert ours == theirs
    content = httpx.get(srv.base_url + f"/v1/steering_vectors/{uploaded['id']}/content", headers=A)
    assert content.status_code == 200 and content.content == data  # the file as uploaded, byte for byte
    # JSON upload (base64) of the same file
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "gguf": base64.b64encode(data).decode()})
    assert r.status_code == 201 and r.json()["norms"] == uploaded["norms"]
    for vid in (uploaded["id"], r.json()["id"]):
        assert httpx.delete(srv.base_url + f"/v1/steering_vectors/{vid}", headers=A).status_code == 200
        assert httpx.get(srv.base_url + f"/v1/steering_vectors/{vid}", headers=A).status_code == 404


def test_bad_uploads_are_400s(srv, tmp_path):
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "gguf": base64.b64encode(b"nope").decode()})
    assert r.status_code == 400 and "GGUF" in r.json()["error"]["message"]
    path = tmp_path / "wide.gguf"
    write_control_vector(path, {5: np.ones(100, np.float32)}, "llama")
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "gguf": base64.b64encode(path.read_bytes()).decode()})
    assert r.status_code == 400 and "576" in r.json()["error"]["message"]
    write_control_vector(path, {0: np.ones(576, np.float32)}, "llama")
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "gguf": base64.b64encode(path.read_bytes()).decode()})
    assert r.status_code == 400 and "direction.0: layer 0" in r.json()["error"]["message"]
    r = post(srv, "/v1/steering_vectors", {"model": MODEL, "positive": POSITIVE, "negative": NEGATIVE,
                                          "layers": [0]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "layers"


def test_vectors_survive_a_restart(srv, sentiment):
    # another server on the same database: a new engine, nothing cached
    store = adyton_steer.store.VectorStore(Database(srv.kernel.database.url))
    again = store.get_any(sentiment["id"])
    assert again.owner == "acct-a" and again.model == MODEL
    stored = adyton_steer.stores(srv.kernel).vectors.get_any(sentiment["id"])
    assert np.array_equal(again.vectors[10], stored.vectors[10])
    store.db.dispose()


def test_openai_sdk_extra_body_and_completions(srv, sentiment):
    """The Axionic document's call, with the openai SDK: extra_body on chat
    completions; and the same on /v1/completions."""
    import openai

    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="key-a", max_retries=0)
    messages = [{"role": "user", "content": "Describe a sunset."}]

    def chat(**extra):
        out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                             extra_body=extra or None)
        return out.choices[0].message.content

    plain = chat()
    assert chat(steering_vector_id=sentiment["id"], steering_strength=0) == plain
    assert chat(steering_vector_id=sentiment["id"], steering_strength=5.0) != plain
    completion = client.completions.create(model=MODEL, prompt="The weather today is", max_tokens=8,
                                           temperature=0,
                                           extra_body={"steering_vector_id": sentiment["id"],
                                                       "steering_strength": 5.0})
    assert completion.choices[0].text != client.completions.create(
        model=MODEL, prompt="The weather today is", max_tokens=8, temperature=0).choices[0].text
    other = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="key-b", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=MODEL, messages=messages, max_tokens=4,
                                      extra_body={"steering_vector_id": sentiment["id"]})
    with pytest.raises(openai.BadRequestError, match="steering_strength"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4,
                                       extra_body={"steering_vector_id": sentiment["id"],
                                                   "steering_strength": 50})


def test_sampling_generate_takes_steering_too(srv, sentiment):
    """Axionic /sampling/generate (adyton-guided) hands the fields on as well."""
    def run(headers=A, **steer):
        return post(srv, "/sampling/generate", {"model": MODEL, "prompt": "The weather today is",
                                                "method": "guided-generation", "max_new_tokens": 8,
                                                "params": {"temperature": 0}, "regex_pattern": "[a-z ]{1,40}",
                                                **steer}, headers)

    plain = run()
    assert plain.status_code == 200, plain.text
    zero = run(steering_vector_id=sentiment["id"], steering_strength=0)
    assert zero.status_code == 200 and zero.json()["text"] == plain.json()["text"]
    steered = run(steering_vector_id=sentiment["id"], steering_strength=6)
    assert steered.status_code == 200 and steered.json()["text"] != plain.json()["text"]
    assert run(headers=B, steering_vector_id=sentiment["id"]).status_code == 404


def test_an_axionic_policy_carries_steering(srv, sentiment):
    """policy.sampling.steering_vector_id / steering_strength (adyton-guided
    hands them on); the request's own fields win over the policy's."""
    body = {"prompt": "The weather today is", "max_tokens": 12}

    def policy(strength, headers=A, **top):
        sampling = {"steering_vector_id": sentiment["id"], "steering_strength": strength}
        return post(srv, "/t/generate", {"temperature": 0, **body,
                                         "extra": {"policy": {"sampling": sampling}, **top}}, headers)

    plain = generate(srv, **body)
    assert policy(0).json()["choices"][0]["text"] == plain
    steered = generate(srv, **body, extra={"steering_vector_id": sentiment["id"], "steering_strength": 4})
    assert policy(4).json()["choices"][0]["text"] == steered
    assert policy(4, steering_strength=0).json()["choices"][0]["text"] == plain
    assert policy(1, headers=B).status_code == 404


@pytest.mark.parametrize("path,body", [
    ("/v1/steering_vectors", []), ("/v1/steering_vectors", "x"), ("/v1/steering_vectors", {}),
    ("/v1/steering_vectors", {"positive": "x", "negative": ["y"]}),
    ("/v1/steering_vectors", {"positive": ["x"], "negative": ["y"], "layers": ["1"]}),
    ("/v1/steering_vectors", {"positive": ["x"], "negative": ["y"], "layers": [True]}),
    ("/v1/steering_vectors", {"positive": ["x"], "negative": ["y"], "pooling": "max"}),
    ("/v1/steering_vectors", {"positive": ["x"], "negative": ["y"], "model": 5}),
    ("/v1/steering_vectors", {"positive": ["x"], "negative": ["y"], "model": "nope"}),
    ("/v1/steering_vectors", {"positive": ["x"] * 40, "negative": ["y"] * 40}),
    ("/v1/steering_vectors", {"gguf": 5}), ("/v1/steering_vectors", {"gguf": "!!"}),
    ("/v1/steering_vectors", {"gguf": "", "extra": 1}),
    ("/sae/generate", {}), ("/sae/generate", {"prompt": "x", "behavior_names": "Probe"}),
    ("/sae/generate", {"prompt": 5, "behavior_names": ["Probe"]}),
    ("/sae/generate", {"prompt": "x", "behavior_names": ["Probe"], "model": "nope"}),
    ("/sae/generate", {"prompt": "x", "behavior_names": ["Probe"], "max_new_tokens": 10 ** 9}),
    ("/sae/generate", {"prompt": "x", "behavior_names": ["Probe"], "params": []}),
    ("/v1/steering_vectors/sv_x/share", {"shared": True}),
])
def test_hostile_bodies_get_4xx_in_the_error_shape(srv, path, body):
    r = httpx.post(srv.base_url + path, json=body, headers=ADMIN if path.endswith("share") else A, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_a_steered_stream_the_client_leaves_lets_go_of_the_side_context(srv, sentiment):
    steer = {"steering_vector_id": sentiment["id"], "steering_strength": 2}
    expected = generate(srv, prompt="The weather today is", max_tokens=12, extra=steer)
    before = len(srv.limiter.settled)
    with httpx.stream("POST", srv.base_url + "/t/generate", headers=A, timeout=120,
                      json={"prompt": "Tell me everything about the sea.", "max_tokens": 600, "stream": True,
                            "temperature": 0, "min_tokens": 600, "extra": steer}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        next(lines)
    deadline = time.monotonic() + 120
    while len(srv.limiter.settled) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    _, usage, outcome = srv.limiter.settled[before]
    assert outcome == "cancelled" and usage.completion_tokens < 600
    # the side context is free again, and the next steered request gets what it got before
    assert generate(srv, prompt="The weather today is", max_tokens=12, extra=steer) == expected
