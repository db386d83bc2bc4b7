"""The llamacpp backend through the kernel, on the real default model, served
by hypercorn on loopback and called with the kernel's JSON test wire.

Greedy decoding must be exactly llama.cpp's (the reference vectors were made
with the same llama-cpp-python 0.3.36), whether a request runs alone or
batched beside others, cold or reusing a slot's KV prefix.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import socket
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
from llamacpp_helpers import SMOL, chat, generate, start_server, stream

from adyton import DefaultSampler, hookimpl
from adyton_llamacpp.backend import SHARED_SUFFIX, LlamaCppBackend, LlamaCppSettings

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain gravity to a child.",
    "List three fruits.",
    "What is 12 times 7?",
    "Name a famous painter.",
    "How do birds fly?",
    "Say hello in Spanish.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    srv = start_server(tmp_path_factory.mktemp("home"), models_dir, slots=8, slot_context=512)
    assert srv.backend.loaded_model() == SMOL
    yield srv
    srv.stop()


# -- exactness ------------------------------------------------------------------


def test_tokenizer_and_chat_prompt_match_llama_cpp(server, reference):
    backend: LlamaCppBackend = server.backend
    entry = backend._model(SMOL)
    for case in reference["tokenize"]:
        assert entry.vocab.tokenize(case["text"], parse_special=True) == case["ids"], case["text"]
    info = backend.list_models()[0]
    from adyton import GenerationRequest

    for case in reference["chat_greedy"]:
        prepared = backend.prepare(GenerationRequest(messages=case["messages"]), info)
        assert prepared.text == case["prompt"]
        assert prepared.token_ids == case["prompt_ids"]


def test_greedy_matches_the_reference_teacher_forced(server, reference):
    """Teacher-forced through ``Backend.generate``: at every position of every
    reference answer our top token is llama.cpp's, or within a near-tie of
    it. (The reference was made by another build of the same llama.cpp:
    measured here, 3 of 136 positions differ, by logit gaps of 0.007-0.18.)"""
    from adyton import GenerationRequest

    backend: LlamaCppBackend = server.backend
    info = backend.list_models()[0]
    positions = disagree = 0
    for case in reference["chat_greedy"]:
        want = list(case["greedy_ids"])
        prepared = backend.prepare(GenerationRequest(messages=case["messages"]), info)
        forced = iter(want)
        gaps = []

        def step(logits, forced=forced, gaps=gaps):
            token = next(forced)
            top = int(np.argmax(logits))
            gaps.append(float(logits[top] - logits[token]))
            return token

        pieces = list(backend.generate(prepared, step, len(want), threading.Event()))
        assert [p.token_id for p in pieces] == want
        positions += len(gaps)
        disagree += sum(g > 0 for g in gaps)
        assert max(gaps) < 0.25, (case["messages"], gaps)
    assert disagree <= positions // 20, (disagree, positions)


def _solo_texts(server, max_tokens: int) -> list[str]:
    return [generate(server, {"messages": chat(p), "max_tokens": max_tokens})["choices"][0]["text"]
            for p in PROMPTS]


def test_eight_concurrent_streams_each_equal_their_solo_run(server):
    solo = _solo_texts(server, 48)
    engine = server.backend.engine
    engine.max_batch_seqs = 0
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda p: stream(server, {"messages": chat(p), "max_tokens": 48}), PROMPTS))
    for (text, lines), want, prompt in zip(results, solo, PROMPTS, strict=True):
        assert lines[-1]["usage"]["completion_tokens"] > 0
        assert any(x.get("finish") for x in lines)
        assert text == want, prompt
    assert engine.max_batch_seqs >= 4  # they really shared decode steps
    assert engine.wait_idle(10)


def test_prefix_reuse_is_exact(server):
    first = chat("Tell me about the moon.")
    answer = generate(server, {"messages": first, "max_tokens": 24})["choices"][0]["text"]
    follow = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the sun?"}]
    engine = server.backend.engine
    before = engine.reused_tokens
    warm = generate(server, {"messages": follow, "max_tokens": 24})["choices"][0]["text"]
    assert engine.reused_tokens - before >= 20  # the first turn's prompt came from the cache
    engine.forget()  # every slot's cache: the next run reads the whole prompt
    before = engine.reused_tokens
    cold = generate(server, {"messages": follow, "max_tokens": 24})["choices"][0]["text"]
    assert engine.reused_tokens == before
    assert warm == cold


# -- refusals -------------------------------------------------------------------


def test_prompt_longer_than_a_slot_is_400_before_anything(server):
    r = generate(server, {"prompt": "word " * 600, "max_tokens": 4})
    assert r["status"] == 400
    assert r["err"]["code"] == "context_length_exceeded"
    r = generate(server, {"messages": chat("hi"), "max_tokens": 600})
    assert r["status"] == 400 and r["err"]["code"] == "context_length_exceeded"


# -- cancellation -----------------------------------------------------------------


def test_a_long_prompt_is_read_in_chunks_beside_the_running_sequences(server):
    """While a 450-token prompt is read (``prefill_chunk`` 128: 4 steps), a
    running sequence keeps getting a token every step."""
    backend: LlamaCppBackend = server.backend
    from adyton import GenerationRequest

    info = backend.list_models()[0]
    running = backend.prepare(GenerationRequest(messages=chat(PROMPTS[0])), info)
    long = backend.prepare(GenerationRequest(prompt="one two three four five " * 90), info)
    assert len(long.token_ids) > 3 * backend.settings.prefill_chunk
    def greedy(logits):
        return int(np.argmax(logits))
    ticks: list[str] = []
    lock = threading.Lock()

    def consume(prepared, tag, n):
        for _ in backend.generate(prepared, greedy, n, threading.Event()):
            with lock:
                ticks.append(tag)

    first = threading.Thread(target=consume, args=(running, "a", 60))
    first.start()
    while not ticks:
        time.sleep(0.001)
    second = threading.Thread(target=consume, args=(long, "b", 2))
    with lock:
        joined = len(ticks)
    second.start()
    second.join(120)
    first.join(120)
    answered = ticks.index("b")
    # from the moment the long prompt joined until its first token, "a" went on
    assert ticks[joined:answered].count("a") >= 3, (joined, ticks)
    assert backend.engine.wait_idle(10)


def _raw_stream(port: int, body: dict) -> socket.socket:
    payload = json.dumps({"temperature": 0, "stream": True, **body}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /t/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    sock.recv(1)  # the response began: the request has its slot
    return sock


def test_cancelled_sequence_frees_its_slot_within_a_step(server):
    """At the engine: a consumer whose request is cancelled leaves the batch
    on its next step, and its slot is free for the next sequence."""
    backend: LlamaCppBackend = server.backend
    from adyton import GenerationRequest

    info = backend.list_models()[0]
    prepared = [backend.prepare(GenerationRequest(messages=chat(p)), info) for p in PROMPTS[:2]]
    def greedy(logits):
        return int(np.argmax(logits))
    stop = [threading.Event(), threading.Event()]
    gens = [backend.generate(p, greedy, 400, e) for p, e in zip(prepared, stop, strict=True)]
    for g in gens:
        next(g)
    engine = backend.engine
    stop[0].set()
    at = engine.steps
    with pytest.raises(StopIteration):
        next(gens[0])  # the generator returns at its next step
    assert engine.steps - at <= 1
    deadline = time.monotonic() + 5
    while sum(s.seq is not None for s in engine._slots) != 1 and time.monotonic() < deadline:
        next(gens[1])
    assert sum(s.seq is not None for s in engine._slots) == 1
    assert engine.steps - at <= 2
    gens[1].close()
    assert engine.wait_idle(10)


def test_disconnect_frees_the_slot_for_the_next_waiting_request(tmp_path, models_dir):
    srv = start_server(tmp_path / "home", models_dir, slots=2, slot_context=512)
    try:
        queue = srv.kernel.queues["llamacpp"]
        socks = [_raw_stream(srv.port, {"messages": chat(p), "max_tokens": 400, "logit_bias": {"2": -100}})
                 for p in PROMPTS[:2]]
        waiting = cf.ThreadPoolExecutor(1).submit(
            stream, srv, {"messages": chat(PROMPTS[2]), "max_tokens": 4})
        deadline = time.monotonic() + 30
        while queue.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.waiting == 1 and queue.running == 2
        engine = srv.backend.engine
        seen = len(engine.log)
        socks[0].close()  # one client goes away mid-stream
        gone = time.monotonic()
        _text, lines = waiting.result(60)  # the waiting request got the slot and finished
        assert lines[-1]["usage"]["completion_tokens"] == 4
        assert time.monotonic() - gone < 20
        events = list(engine.log)[seen:]
        left = next(step for step, what, _ in events if what == "leave")
        joined = next(step for step, what, _ in events if what == "join")
        assert joined - left <= 2, events  # the next request joined the batch a step later
        socks[1].close()
        assert srv.backend.engine.wait_idle(30)
    finally:
        srv.stop()


# -- an engine error mid-generation ----------------------------------------------------


class _BadTokenAt:
    """A sampler that picks a token id outside the vocabulary at step 3 for
    requests whose ``user`` is "boom" (llama_decode then refuses the batch)."""

    __name__ = "bad-token-sampler"

    @hookimpl(tryfirst=True)
    def sampler(self, request, kernel):
        if request.user != "boom":
            return None
        inner = DefaultSampler(request)

        class Bad:
            n = 0

            def reset(self, seed):
                inner.reset(seed)

            def adjust(self, logits):
                inner.adjust(logits)

            def choose(self, logits):
                Bad.n += 1
                return 10**7 if Bad.n == 3 else inner.choose(logits)

        return Bad()


def test_engine_error_ends_one_request_and_spares_the_others(tmp_path, models_dir, caplog):
    srv = start_server(tmp_path / "home", models_dir, slots=2, slot_context=512, plugins=[_BadTokenAt()])
    try:
        solo = generate(srv, {"messages": chat(PROMPTS[1]), "max_tokens": 40})["choices"][0]["text"]
        with cf.ThreadPoolExecutor(2) as pool:
            good = pool.submit(stream, srv, {"messages": chat(PROMPTS[1]), "max_tokens": 40})
            time.sleep(0.2)
            bad = pool.submit(generate, srv, {"messages": chat(PROMPTS[0]), "max_tokens": 40, "user": "boom"})
            bad, (good_text, _) = bad.result(120), good.result(120)
        assert bad["status"] == 500, bad
        assert "llama.cpp failed to decode" in bad["err"]["message"]
        assert good_text == solo
        assert srv.backend.engine.wait_idle(10)
        again = generate(srv, {"messages": chat(PROMPTS[1]), "max_tokens": 40})
        assert again["choices"][0]["text"] == solo
    finally:
        srv.stop()


# -- catalog ------------------------------------------------------------------------


def test_bad_files_are_skipped_with_one_line_and_not_found(tmp_path, models_dir, caplog):
    d = tmp_path / "models"
    d.mkdir()
    for f in models_dir.iterdir():
        (d / f.name).symlink_to(f.resolve())
    (d / "junk.gguf").write_bytes(b"this is not a GGUF file" * 10)
    with open(next(models_dir.iterdir()).resolve(), "rb") as src:
        (d / "truncated.gguf").write_bytes(src.read(3 << 20))
    import gguf

    writer = gguf.GGUFWriter(str(d / "unknown-arch.gguf"), "nonsense-arch")  # a GGUF of no known family
    writer.add_uint32("nonsense-arch.context_length", 128)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    caplog.set_level(logging.WARNING, logger="adyton.llamacpp")
    backend = LlamaCppBackend(LlamaCppSettings(models_dir=d), tmp_path)
    try:
        assert [m.id for m in backend.list_models()] == [SMOL]
        backend.list_models()
        lines = [r.getMessage() for r in caplog.records if r.name == "adyton.llamacpp"]
        assert len(lines) == 3, lines  # one per file, not one per scan
        assert any("junk.gguf" in x and "magic" in x for x in lines), lines
        assert any("truncated.gguf" in x and "file bounds" in x for x in lines), lines
        assert any("unknown-arch.gguf" in x and "unknown model architecture" in x for x in lines), lines
    finally:
        backend.close()
    srv = start_server(tmp_path / "home", d, slots=2, slot_context=512)
    try:
        for name in ("truncated", "junk", "unknown-arch"):
            r = generate(srv, {"model": name, "messages": chat("hi"), "max_tokens": 2})
            assert r["status"] == 404 and r["err"]["code"] == "model_not_found", r
    finally:
        srv.stop()


def test_a_model_another_backend_serves_gets_a_suffixed_id(tmp_path, models_dir):
    from adyton.testing import ScriptedBackend

    class Kernel:
        backends: ClassVar[dict] = {}

    kernel = Kernel()
    backend = LlamaCppBackend(LlamaCppSettings(models_dir=models_dir), tmp_path, kernel)
    kernel.backends = {"other": ScriptedBackend(models=[SMOL]), "llamacpp": backend}
    try:
        (info,) = backend.list_models()
        assert info.id == SMOL + SHARED_SUFFIX
        assert all(a.endswith(SHARED_SUFFIX) for a in info.aliases)
    finally:
        backend.close()


# -- embeddings ----------------------------------------------------------------------


def test_embeddings_through_the_kernel(server):
    import asyncio

    from adyton import Credentials, EmbeddingRequest

    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue grew by five percent."]
    engine = server.backend.engine
    history = [list(s.history) for s in engine._slots]

    async def run(inputs):
        return await server.kernel.pipeline.embed(EmbeddingRequest(inputs=inputs, model=SMOL), Credentials())

    result = asyncio.run_coroutine_threadsafe(run(texts), server._loop).result(120)
    vectors = result.vectors
    assert result.dimensions == 576 and [v.shape for v in vectors] == [(576,)] * 3
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-4 for v in vectors)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])  # paraphrases are closer
    vocab = server.backend._model(SMOL).vocab
    assert result.usage.prompt_tokens == sum(len(vocab.tokenize(t, parse_special=False)) for t in texts)
    again = asyncio.run_coroutine_threadsafe(run(texts[:1]), server._loop).result(120)
    assert np.array_equal(again.vectors[0], vectors[0])  # deterministic, alone or in a list
    assert [list(s.history) for s in engine._slots] == history  # the generation caches are untouched
    with pytest.raises(Exception, match="outside the vocabulary"):
        asyncio.run_coroutine_threadsafe(run([[1, 2, 10**6]]), server._loop).result(60)


def test_loading_the_loaded_model_does_not_wait_for_running_sequences(server):
    """Another engine thread may ask to load the model that is loaded already
    (it looked while a load was under way): that must not wait for, or block,
    the running sequences."""
    backend: LlamaCppBackend = server.backend
    from adyton import GenerationRequest

    info = backend.list_models()[0]
    prepared = backend.prepare(GenerationRequest(messages=chat(PROMPTS[3])), info)
    gen = backend.generate(prepared, lambda logits: int(np.argmax(logits)), 50, threading.Event())
    next(gen)  # holds a lease now
    loader = threading.Thread(target=backend.load_model, args=(SMOL,))
    loader.start()
    loader.join(10)
    assert not loader.is_alive()
    assert backend.loaded_model() == SMOL
    next(gen)  # and the sequence goes on
    gen.close()
    assert backend._leases == 0


@pytest.mark.parametrize("order", ["llama-first", "llamacpp-first"])
def test_with_adyton_llama_installed_its_model_stays_the_default(tmp_path, models_dir, order):
    """adyton-llama, the embedded default engine, keeps the default model when
    this engine is installed beside it, whatever the registration order; this
    one serves the same file under its suffixed id."""
    import adyton_llama
    import adyton_llamacpp
    from adyton import create_app

    plugins = [adyton_llama, adyton_llamacpp] if order == "llama-first" else [adyton_llamacpp, adyton_llama]
    app = create_app(settings={"home": str(tmp_path / "home"), "llama": {"models_dir": str(models_dir)},
                               "llamacpp": {"models_dir": str(models_dir)}},
                     plugins=plugins, load_entrypoints=False)
    kernel = app.extensions["adyton"]
    try:
        backend, info = kernel.default_model()
        assert (backend.name, info.id) == ("llama", SMOL)
        assert SMOL + SHARED_SUFFIX in kernel.model_names()
    finally:
        for b in kernel.backends.values():
            close = getattr(b, "close", None)
            if close:
                close()
