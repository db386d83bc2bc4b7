"""The side context (``adyton_llamacpp.steering``): hidden states read with
ggml's evaluation callback, control vectors applied where llama.cpp says,
and generation on it equal to the batch engine's when nothing steers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from adyton.testing import require_model
from adyton_llamacpp.engine import BatchEngine, GGUFVocab
from adyton_llamacpp.steering import side_context


@pytest.fixture(scope="module")
def engine():
    path = str(require_model())
    vocab = GGUFVocab(path)
    eng = BatchEngine(path, slots=2, slot_context=256, threads=1, prefill_chunk=64)
    side = side_context(eng, 1)
    yield eng, side, vocab
    side.close()
    eng.close()
    vocab.close()


def _greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def _run(side, vocab, tokens, n, **kw):
    kw.setdefault("vectors", None)
    kw.setdefault("strength", 0.0)
    kw.setdefault("observe", ())
    kw.setdefault("observer", None)
    return [t for t, _, _, _ in side.generate(tokens, _greedy, n, threading.Event(), is_eog=vocab.is_eog,
                                              piece=vocab.token_piece, **kw)]


def test_hidden_states_shape_and_control_vector_offset(engine):
    _, side, vocab = engine
    tokens = vocab.tokenize("The weather today is", parse_special=False)
    plain = side.hidden_states(tokens, [4, 5, side.n_layer - 1], threading.Event())
    assert {k: v.shape for k, v in plain.items()} == {k: (len(tokens), side.n_embd)
                                                      for k in (4, 5, side.n_layer - 1)}
    vector = np.random.default_rng(0).normal(size=side.n_embd).astype(np.float32)
    with side.lock:  # a control vector for layer 5 adds to l_out-5 and leaves layer 4 alone
        side._apply({5: vector}, 2.0)
        side._reset([4, 5])
        steered = side._decode(tokens, 0, all_outputs=True)
        side._clear()
    assert np.array_equal(steered[4], plain[4])
    # position 0 attends only to itself: its layer-5 output moves by exactly 2 * vector
    assert np.allclose(steered[5][0] - plain[5][0], 2 * vector, atol=1e-3)
    assert not np.allclose(steered[5][1:], plain[5][1:], atol=1e-2)  # later positions feel it through attention


def test_unsteered_side_generation_equals_the_batch_engine(engine):
    eng, side, vocab = engine
    tokens = vocab.tokenize("Once upon a time", parse_special=False)
    seq = eng.submit(tokens)
    batch = []
    try:
        for _ in range(8):
            token = _greedy(seq.next_logits(threading.Event()))
            batch.append(token)
            seq.push(token)
    finally:
        seq.release()
    assert _run(side, vocab, tokens, 8) == batch
    vector = np.random.default_rng(1).normal(size=side.n_embd).astype(np.float32) * 4
    assert _run(side, vocab, tokens, 8, vectors={5: vector}, strength=1.0) != batch
    assert _run(side, vocab, tokens, 8, vectors={5: vector}, strength=0.0) == batch
    assert _run(side, vocab, tokens, 8) == batch  # the control vector was cleared


def test_observer_sees_the_states_a_full_read_gives(engine):
    _, side, vocab = engine
    tokens = vocab.tokenize("Paris is the capital of", parse_special=False)
    seen: list[tuple[int, int, np.ndarray]] = []
    out = _run(side, vocab, tokens, 6, observe=(3, 7), observer=lambda i, t, s: seen.append((i, t, s)))
    assert [i for i, _, _ in seen] == list(range(len(out)))
    assert [t for _, t, _ in seen] == out
    full = side.hidden_states(tokens + out, [3, 7], threading.Event())
    for i, _, states in seen:  # token i was chosen at position len(tokens) - 1 + i
        for layer in (3, 7):
            assert np.allclose(states[layer], full[layer][len(tokens) - 1 + i], atol=1e-3)


def test_last_layer_after_the_output_norm_is_llamacpps_embedding(engine):
    """The captured state of the last layer, through the model's output
    RMSNorm (weights and epsilon read from the GGUF), mean-pooled, is what
    llama.cpp's own embeddings output gives."""
    import gguf

    eng, side, vocab = engine
    reader = gguf.GGUFReader(str(require_model()))
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    weight = np.asarray(norm.data, np.float32)
    eps_field = reader.fields[f"{vocab.architecture}.attention.layer_norm_rms_epsilon"]
    eps = float(eps_field.parts[eps_field.data[0]][0])
    tokens = [vocab.bos_id] + vocab.tokenize("Steering vectors live in the residual stream.", parse_special=False)
    h = side.hidden_states(tokens, [side.n_layer - 1], threading.Event())[side.n_layer - 1].astype(np.float64)
    normed = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + eps) * weight
    pooled = normed.mean(axis=0)
    pooled /= np.linalg.norm(pooled)
    assert np.allclose(pooled, eng.embed(tokens), atol=2e-3)
