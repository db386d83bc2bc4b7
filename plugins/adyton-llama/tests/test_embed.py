"""Embeddings from the llama engine and backend, on the real default model.

The engine's ``embed`` evaluates tokens into the same KV cache generation
uses: these tests check that a generation after an embedding gives exactly
the tokens of a cold generation (the prefix-reuse bookkeeping stays right),
and the properties a caller relies on (same input, same vector; unit length;
inputs differ, vectors differ)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from adyton import ContextTooLong, InvalidRequest, ModelInfo
from adyton_llama.backend import LlamaBackend, LlamaSettings
from adyton_llama.engine import greedy

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

N_EMBD = 576  # SmolLM2-135M's hidden size


def _ids(tokenizer, text):
    return tokenizer.encode(text, parse_special=False)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embed_is_deterministic_and_leaves_the_context_usable(smol_engine, smol_tokenizer, reference, pooling):
    eng = smol_engine
    chat = reference["chat_greedy"][0]
    eng.reset()
    cold = list(eng.generate(chat["prompt_ids"], greedy, 8, stop_ids=smol_tokenizer.eos_ids))

    ids = _ids(smol_tokenizer, "The cat sat on the mat.")
    a = eng.embed(ids, pooling)
    assert a.shape == (N_EMBD,) and a.dtype == np.float32 and np.isfinite(a).all()
    assert eng.tokens == tuple(ids)  # the context holds the input, recorded as evaluated
    assert np.array_equal(eng.embed(ids, pooling), a)  # warm (prefix cached) == cold
    # an input sharing the chat prompt's prefix, then the generation again
    eng.embed(chat["prompt_ids"][:40], pooling)
    warm = list(eng.generate(chat["prompt_ids"], greedy, 8, stop_ids=smol_tokenizer.eos_ids))
    assert warm == cold


def test_embed_can_be_stopped(smol_engine, smol_tokenizer):
    ids = _ids(smol_tokenizer, "one two three four five six seven eight")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    assert smol_engine.embed(ids, "mean", stop) is None


@pytest.fixture(scope="module")
def backend(tmp_path_factory, model_path):
    from pathlib import Path

    d = tmp_path_factory.mktemp("embed-models")
    (d / Path(model_path).name).symlink_to(model_path)
    b = LlamaBackend(LlamaSettings(models_dir=d, max_context=512, threads=1), tmp_path_factory.mktemp("home"))
    yield b
    b.close()


def test_backend_vectors_are_unit_length_and_tell_texts_apart(backend):
    model = backend.list_models()[0]
    assert backend.embedding_dimensions(model) == N_EMBD
    texts = ["How do I bake bread at home?", "How do I bake bread at home?", "The stock market fell sharply."]
    ids = backend.prepare_embeddings(texts, model)
    assert ids[0] == ids[1] and all(ids)
    backend.load_model(model.id)
    a, b, c = backend.embed(model, ids, threading.Event())
    for v in (a, b, c):
        assert v.shape == (N_EMBD,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert np.array_equal(a, b)
    assert float(a @ c) < 0.99  # different texts, different directions
    # token arrays are embedded as given; ids outside the vocabulary are refused
    (d,) = backend.embed(model, backend.prepare_embeddings([ids[0]], model), threading.Event())
    assert np.array_equal(d, a)
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        backend.prepare_embeddings([[1, 10**7]], model)
    with pytest.raises(ContextTooLong, match="input 1 is at least"):  # not tokenized to the end
        backend.prepare_embeddings(["fine", "word " * 100_000], model)
    # stopped before the first input: nothing
    stopped = threading.Event()
    stopped.set()
    assert backend.embed(model, ids, stopped) == []


def test_backend_refuses_a_model_it_has_not_loaded(backend):
    from adyton import BackendError

    other = ModelInfo(id=backend.list_models()[0].id)
    backend.close()
    with pytest.raises(BackendError, match="not loaded"):
        backend.embed(other, [[1]], threading.Event())
