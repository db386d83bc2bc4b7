"""/sae/generate on the real default model: the activations it streams equal
a NumPy recomputation from the hidden states of the same tokens, for a small
SAELens-format SAE the test writes, and a linear probe."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file
from steer_helpers import ADMIN, MODEL, A, generate, post

from adyton import GenerationRequest

PROMPT = "The history of the Roman empire"
SAE_LAYER, PROBE_LAYER, FEATURE = 12, 20, 3


def sse(srv, body, headers=A):
    with httpx.stream("POST", srv.base_url + "/sae/generate", json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_bytes()).decode()
    events = [line[len("data: "):] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _states(srv, tokens, layers):
    model = srv.kernel.models.resolve(MODEL)[1]
    return srv.backend.hidden_states(model, [tokens], layers, threading.Event())[0]


@pytest.fixture(scope="module")
def sae(srv, tmp_path_factory):
    """A JumpReLU SAE (W_enc, b_enc, threshold, b_dec, apply_b_dec_to_input)
    of 8 features on layer 12, its biases set so that feature 3 fires on
    about half the prompt's tokens."""
    rng = np.random.default_rng(7)
    model = srv.kernel.models.resolve(MODEL)[1]
    tokens = srv.backend.prepare(GenerationRequest(prompt=PROMPT), model).token_ids
    h = _states(srv, tokens, [SAE_LAYER])[SAE_LAYER]
    w_enc = rng.normal(size=(576, 8)).astype(np.float32) / 24
    b_dec = rng.normal(size=576).astype(np.float32) * 0.1
    b_enc = -np.median((h - b_dec) @ w_enc, axis=0).astype(np.float32)
    threshold = np.full(8, 0.05, np.float32)
    d = tmp_path_factory.mktemp("sae")
    (d / "cfg.json").write_text(json.dumps({"d_in": 576, "d_sae": 8, "hook_name": "blocks.12.hook_resid_post",
                                            "apply_b_dec_to_input": True, "architecture": "jumprelu"}))
    save_file({"W_enc": w_enc, "b_enc": b_enc, "threshold": threshold, "b_dec": b_dec,
               "W_dec": w_enc.T.copy()}, str(d / "sae_weights.safetensors"))
    probe = {"vector": (rng.normal(size=576) / 24).astype(np.float32).tolist(), "bias": 0.5, "threshold": 0.0}
    r = post(srv, "/sae/behaviors", {"name": "Honesty", "model": MODEL, "layer": SAE_LAYER,
                                     "sae": {"path": str(d), "feature": FEATURE}}, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = post(srv, "/sae/behaviors", {"name": "Probe", "model": MODEL, "layer": PROBE_LAYER, "probe": probe},
             headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"w": w_enc[:, FEATURE], "b": b_enc[FEATURE], "t": threshold[FEATURE], "b_dec": b_dec,
            "probe": np.asarray(probe["vector"], np.float32)}


def test_behaviors_are_admin_only_and_listed(srv, sae):
    body = {"name": "X", "model": MODEL, "layer": 1, "probe": {"vector": [0.0] * 576}}
    assert post(srv, "/sae/behaviors", body, headers={}).status_code == 401
    assert post(srv, "/sae/behaviors", body, headers=A).status_code == 403
    assert httpx.delete(srv.base_url + "/sae/behaviors/Honesty", headers=A).status_code == 403
    listed = httpx.get(srv.base_url + "/sae/behaviors", headers=A).json()["data"]
    assert {b["name"]: (b["kind"], b["layer"]) for b in listed} == {"Honesty": ("sae", 12), "Probe": ("probe", 20)}


class _WatchedLock:
    """A lock that counts the callers that started to wait for it."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.callers = 0

    def __enter__(self) -> _WatchedLock:
        self.callers += 1
        self.inner.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.inner.release()


def test_behavior_reads_wait_off_the_event_loop(srv, sae, monkeypatch):
    """While the behaviors file is being written (its lock held, as a put()
    does), a listing and a /sae/generate wait for it on a worker thread, not
    on the event loop: /health answers meanwhile."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from adyton_steer import stores

    lock = _WatchedLock()
    monkeypatch.setattr(stores(srv.kernel).behaviors, "_lock", lock)
    with ThreadPoolExecutor(2) as pool:
        with lock.inner:  # the file "being written"
            listing = pool.submit(httpx.get, srv.base_url + "/sae/behaviors", headers=A, timeout=60)
            generating = pool.submit(post, srv, "/sae/generate", {"model": MODEL, "prompt": PROMPT,
                                     "max_new_tokens": 1, "behavior_names": ["Nope"]})

            def wait_for(callers: int) -> None:
                deadline = time.monotonic() + 10
                while lock.callers < callers and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert lock.callers >= callers, f"{callers - lock.callers} request(s) did not reach the store"

            wait_for(1)
            assert httpx.get(srv.base_url + "/health", timeout=2.0).status_code == 200
            wait_for(2)  # and one waiting does not keep the other from waiting beside it
            assert not listing.done() and not generating.done()
        assert listing.result(timeout=30).status_code == 200
        assert {b["name"] for b in listing.result().json()["data"]} == {"Honesty", "Probe"}
        r = generating.result(timeout=30)
        assert r.status_code == 400 and "'Nope'" in r.json()["error"]["message"]


def test_unknown_behaviors_are_a_400_listing_the_known_ones(srv, sae):
    r = post(srv, "/sae/generate", {"model": MODEL, "prompt": PROMPT, "max_new_tokens": 4,
                                    "behavior_names": ["Honesty", "Sycophancy"]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "'Sycophancy'" in error["message"] and "Honesty, Probe" in error["message"]
    assert error["param"] == "behavior_names"


def test_streamed_activations_equal_a_numpy_recomputation(srv, sae):
    before = len(srv.limiter.settled)
    events = sse(srv, {"model": MODEL, "prompt": PROMPT, "max_new_tokens": 12,
                       "behavior_names": ["Honesty", "Probe"]})
    tokens = [e for e in events if e["type"] == "token"]
    summary = events[-1]
    assert summary["type"] == "summary" and len(tokens) == 12
    # (sampled at the default temperature: the recomputation reads the tokens it produced)
    model = srv.kernel.models.resolve(MODEL)[1]
    prompt_ids = srv.backend.prepare(GenerationRequest(prompt=PROMPT), model).token_ids
    generated = [t["token_id"] for t in tokens]
    states = _states(srv, prompt_ids + generated, [SAE_LAYER, PROBE_LAYER])
    for i, event in enumerate(tokens):
        assert event["index"] == i
        h = states[SAE_LAYER][len(prompt_ids) - 1 + i]  # the position that chose token i
        pre = float((h - sae["b_dec"]) @ sae["w"] + sae["b"])
        expected = max(pre, 0.0) if pre > sae["t"] else 0.0
        assert event["activations"]["Honesty"] == pytest.approx(expected, abs=2e-3, rel=1e-3)
        probe = float(states[PROBE_LAYER][len(prompt_ids) - 1 + i] @ sae["probe"] + 0.5)
        assert event["activations"]["Probe"] == pytest.approx(probe, abs=2e-3, rel=1e-3)
    honesty = [t["activations"]["Honesty"] for t in tokens]
    report = summary["behaviors"]["Honesty"]
    assert report["max"] == pytest.approx(max(honesty)) and report["mean"] == pytest.approx(np.mean(honesty))
    assert report["fired_tokens"] == sum(1 for a in honesty if a > 0)
    assert sum(s["end"] - s["start"] for s in report["spans"]) == report["fired_tokens"]
    for span in report["spans"]:
        assert all(a > 0 for a in honesty[span["start"]:span["end"]])
    assert summary["text"] == "".join(e["text"] for e in events if e["type"] == "text")
    assert summary["usage"]["completion_tokens"] == 12
    # counted like any generation: one reservation, settled once with the real usage
    settled = srv.limiter.settled[before:]
    assert len(settled) == 1 and settled[0][1].completion_tokens == 12 and settled[0][2] == "ok"


def test_monitored_greedy_output_equals_the_unmonitored_one(srv, sae):
    events = sse(srv, {"model": MODEL, "prompt": PROMPT, "max_new_tokens": 16, "behavior_names": ["Probe"],
                       "params": {"temperature": 0}})
    assert events[-1]["text"] == generate(srv, prompt=PROMPT, max_tokens=16)


def test_bad_sae_requests_are_400s(srv, sae):
    def status(body):
        return post(srv, "/sae/generate", {"model": MODEL, "prompt": PROMPT, "behavior_names": ["Probe"],
                                           **body}).status_code

    assert status({"behavior_names": []}) == 400
    assert status({"max_new_tokens": 0}) == 400
    assert status({"params": {"temperature": "hot"}}) == 400
    assert status({"params": {"beam": 2}}) == 400
    assert status({"surprise": 1}) == 400
    for names in (["Probe"], ["Nope"]):  # the known names are not told to a stranger
        r = post(srv, "/sae/generate", {"model": MODEL, "prompt": PROMPT, "behavior_names": names}, headers={})
        assert r.status_code == 401 and "Probe" not in r.text
    bad = {"name": "Bad", "model": MODEL, "layer": 1, "sae": {"path": "/nonexistent", "feature": 0}}
    assert post(srv, "/sae/behaviors", bad, headers=ADMIN).status_code == 400
    bad = {"name": "Bad", "model": MODEL, "layer": 99, "probe": {"vector": [0.0] * 576}}
    assert post(srv, "/sae/behaviors", bad, headers=ADMIN).status_code == 400
