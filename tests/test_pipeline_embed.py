"""``kernel.pipeline.embed``: the embeddings capability through the one
request path (auth, model, tokens, limits, engine queue, settle once)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kernel_helpers import AuthLimitPlugin, LedgerLimiter, kernel_of

from adyton import (
    BackendError,
    ContextTooLong,
    Credentials,
    EmbeddingRequest,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServerBusy,
    Unauthorized,
)
from adyton.testing import ScriptedBackend

KEY = Credentials(kind="api_key", secret="good", wire_format="test")


async def test_vectors_usage_and_one_settle(make_app):
    limiter = LedgerLimiter()
    backend = ScriptedBackend(embedding_dimensions=16)
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        kernel = kernel_of(app)
        result = await kernel.pipeline.embed(
            EmbeddingRequest(inputs=["red apple pie", "red apple pie", "quantum tunnelling"],
                             model="scripted-model"), KEY)
    assert result.model == "scripted-model" and result.dimensions == 16
    a, b, c = result.vectors
    assert a.dtype == np.float32 and a.shape == (16,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert result.usage.prompt_tokens == 8 and result.usage.completion_tokens == 0
    assert result.headers["x-ratelimit-remaining-tokens"] == "99"
    assert [c.prompt_tokens for c in limiter.reserved] == [8]
    assert [c.max_completion_tokens for c in limiter.reserved] == [0]
    assert limiter.settled == [("acct-1", 8, 0, "ok")]


async def test_token_arrays_are_embedded_as_given(make_app):
    backend = ScriptedBackend(embedding_dimensions=4)
    app = make_app(backend)
    async with app.test_app():
        result = await kernel_of(app).pipeline.embed(EmbeddingRequest(inputs=[[1, 2, 3], [7]]), KEY)
    assert backend.embedded == [[1, 2, 3], [7]]
    assert result.usage.prompt_tokens == 4


async def test_refusals_happen_before_anything_is_reserved(make_app):
    limiter = LedgerLimiter()
    plain = ScriptedBackend(name="plain", models=("plain-model",))
    embedder = ScriptedBackend(name="emb", models=("emb-model",), embedding_dimensions=8, context_length=3)
    app = make_app(plain, embedder, plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        pipeline = kernel_of(app).pipeline
        with pytest.raises(Unauthorized):
            await pipeline.embed(EmbeddingRequest(inputs=["x"], model="emb-model"),
                                 Credentials(kind="api_key", secret="bad"))
        with pytest.raises(ModelNotFound):
            await pipeline.embed(EmbeddingRequest(inputs=["x"], model="nope"), KEY)
        with pytest.raises(InvalidRequest, match=r"'plain-model'.*does not produce embeddings") as err:
            await pipeline.embed(EmbeddingRequest(inputs=["x"], model="plain-model"), KEY)
        assert err.value.status == 400 and err.value.param == "model"
        with pytest.raises(InvalidRequest, match="8-dimensional") as err:
            await pipeline.embed(EmbeddingRequest(inputs=["x"], model="emb-model", dimensions=4), KEY)
        assert err.value.param == "dimensions"
        with pytest.raises(ContextTooLong, match="input 1 is 4 tokens"):
            await pipeline.embed(EmbeddingRequest(inputs=["a", "a b c d"], model="emb-model"), KEY)
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            await pipeline.embed(EmbeddingRequest(inputs=[[70000]], model="emb-model"), KEY)
        # the model's own size is fine
        ok = await pipeline.embed(EmbeddingRequest(inputs=["x"], model="emb-model", dimensions=8), KEY)
        assert ok.dimensions == 8
    assert len(limiter.reserved) == 1 and limiter.settled == [("acct-1", 1, 0, "ok")]


async def test_rate_limited_is_raised_and_nothing_runs(make_app):
    backend = ScriptedBackend(embedding_dimensions=8)
    app = make_app(backend, plugins=[AuthLimitPlugin(LedgerLimiter(refuse=True))])
    async with app.test_app():
        with pytest.raises(RateLimited):
            await kernel_of(app).pipeline.embed(EmbeddingRequest(inputs=["x"]), KEY)
    assert backend.embedded == []


async def test_busy_queue_is_429_and_settled_rejected(make_app):
    limiter = LedgerLimiter()
    backend = ScriptedBackend(["a"] * 40, delay_s=0.02, embedding_dimensions=8)
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter)], settings={"queue": {"max_waiting": 0}})
    async with app.test_app() as test_app:
        kernel = kernel_of(app)
        while kernel.models.loading:
            await asyncio.sleep(0.005)
        client = test_app.test_client()
        first = asyncio.ensure_future(client.post("/t/generate", json={"prompt": "hi"},
                                                  headers={"x-key": "good"}))
        for _ in range(1000):
            if backend.running.is_set():
                break
            await asyncio.sleep(0.005)
        with pytest.raises(ServerBusy):
            await kernel.pipeline.embed(EmbeddingRequest(inputs=["x"]), KEY)
        assert (await first).status_code == 200
    # the generation settled ok; the embedding was refused before reserving
    assert [s[3] for s in limiter.settled] == ["ok"]


async def test_cancelled_while_running_stops_between_inputs_and_settles_once(make_app):
    limiter = LedgerLimiter()
    backend = ScriptedBackend(delay_s=0.05, embedding_dimensions=8)
    app = make_app(backend, plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        kernel = kernel_of(app)
        task = asyncio.ensure_future(kernel.pipeline.embed(EmbeddingRequest(inputs=["x"] * 40), KEY))
        for _ in range(1000):
            if backend.embedded:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
    assert 0 < len(backend.embedded) < 40
    assert limiter.settled == [("acct-1", 40, 0, "cancelled")]


async def test_backend_bug_is_a_clean_backend_error(make_app):
    class Broken(ScriptedBackend):
        def embed(self, model, inputs, cancelled):
            raise RuntimeError("boom")

    limiter = LedgerLimiter()
    app = make_app(Broken(embedding_dimensions=8), plugins=[AuthLimitPlugin(limiter)])
    async with app.test_app():
        with pytest.raises(BackendError, match="boom"):
            await kernel_of(app).pipeline.embed(EmbeddingRequest(inputs=["x"]), KEY)
    assert limiter.settled == [("acct-1", 1, 0, "error")]


def test_request_validation():
    with pytest.raises(ValueError):
        EmbeddingRequest(inputs=[])
    with pytest.raises(ValueError, match="input 1 is empty"):
        EmbeddingRequest(inputs=["a", ""])
    with pytest.raises(ValueError):
        EmbeddingRequest(inputs=["a"], dimensions=0)


async def test_the_documented_embedder_works(make_app):
    """docs/plugin-authors.md's embeddings example, on its LookupBackend."""
    import re
    import types
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugin-authors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    namespace = types.ModuleType("doc_embedder").__dict__
    exec(compile(next(b for b in blocks if "class LookupBackend" in b), "plugin-authors.md", "exec"), namespace)
    exec(compile(next(b for b in blocks if "class LookupEmbedder" in b), "plugin-authors.md", "exec"), namespace)
    app = make_app(namespace["LookupEmbedder"]())
    async with app.test_app():
        result = await kernel_of(app).pipeline.embed(EmbeddingRequest(inputs=["a b", "c d e"]), KEY)
    assert result.dimensions == 8 and [v.shape for v in result.vectors] == [(8,), (8,)]
    assert result.usage.prompt_tokens == 5
