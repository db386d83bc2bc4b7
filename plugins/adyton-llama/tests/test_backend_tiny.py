"""The llama Backend through the kernel on tiny random-weight GGUF files (no
real model needed): an app built with create_app and run with Quart's
test_app, requests through ``kernel.pipeline``. The tokens are chosen by a
scripted sampler, so what the tiny models' logits say does not matter."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import adyton_llama
from adyton import Credentials, GenerationRequest, Sampler, create_app, hookimpl
from adyton_llama import backend as backend_mod
from adyton_llama.tokenizer import GGUFTokenizer, gpt2_bytes_to_unicode


class ScriptedSampler(Sampler):
    """Chooses the given token ids in order, whatever the logits."""

    modifies_logits = False

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.i = 0

    def reset(self, seed):
        self.i = 0

    def adjust(self, logits):
        pass

    def choose(self, logits):
        token = self.ids[self.i]
        self.i += 1
        return token


class ScriptPlugin:
    """``sampler`` hook: requests whose prompt is a key of ``scripts`` get a
    ScriptedSampler with those ids; others the kernel's default sampler."""

    __name__ = "script-sampler"

    def __init__(self, scripts: dict[str, list[int]]) -> None:
        self.scripts = scripts

    @hookimpl
    def sampler(self, request, kernel):
        ids = self.scripts.get(request.prompt or "")
        return ScriptedSampler(ids) if ids is not None else None


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_gpt2, tiny_llama) -> Path:
    d = tmp_path_factory.mktemp("tiny-models")
    (d / "tiny-gpt2.gguf").symlink_to(tiny_gpt2)
    (d / "tiny-llama.gguf").symlink_to(tiny_llama)
    return d


def make_app(tmp_path, models_dir, *plugins):
    settings = {"home": str(tmp_path / "home"), "log_level": "warning",
                "models": {"load_at_start": False},
                "llama": {"models_dir": str(models_dir), "threads": 1}}
    return create_app(settings=settings, plugins=[adyton_llama, *plugins], load_entrypoints=False)


async def run(kernel, **request):
    generation = await kernel.pipeline.submit(GenerationRequest(temperature=0, **request), Credentials())
    return await generation.result()


async def test_a_character_cut_short_by_eos_is_not_a_token(tmp_path, models_dir, tiny_gpt2):
    """Tokens "a", then the first byte of "é" (0xC3 0xA9), then end of
    sequence: two tokens were generated, and the held-back byte, which no
    token completes, is no text (and no third token)."""
    tok = GGUFTokenizer.from_gguf(tiny_gpt2)
    alphabet = gpt2_bytes_to_unicode()
    a, lead = tok.piece_to_id(alphabet[ord("a")]), tok.piece_to_id(alphabet[0xC3])
    assert tok.token_bytes()[lead] == b"\xc3" and tok.eos_id in tok.eos_ids
    app = make_app(tmp_path, models_dir, ScriptPlugin({"eos": [a, lead, tok.eos_id]}))
    async with app.test_app():
        result = await run(app.extensions["adyton"], model="tiny-gpt2", prompt="eos", max_tokens=8)
    choice = result.choices[0]
    assert choice.finish_reason.value == "stop"
    assert result.usage.completion_tokens == 2
    assert choice.text == "a"


async def test_reading_a_tokenizer_does_not_block_the_event_loop(tmp_path, models_dir, monkeypatch):
    """The first request for a model builds its tokenizer (~0.5 s for a real
    49k vocabulary; 1.5 s here): in a worker thread, so another request, for the
    loaded model, is served meanwhile and the loop never stalls."""
    slow_s = 1.5

    class SlowTokenizer(GGUFTokenizer):
        def __init__(self, meta):
            if Path(meta.path).name == "tiny-llama.gguf":
                time.sleep(slow_s)
            super().__init__(meta)

    monkeypatch.setattr(backend_mod, "GGUFTokenizer", SlowTokenizer)
    app = make_app(tmp_path, models_dir)
    async with app.test_app():
        kernel = app.extensions["adyton"]
        await run(kernel, model="tiny-gpt2", prompt="hello", max_tokens=2)  # loaded now

        stalls: list[float] = []

        async def ticker():
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                stalls.append(time.monotonic() - t)

        ticking = asyncio.create_task(ticker())
        slow = asyncio.create_task(run(kernel, model="tiny-llama", prompt="hello", max_tokens=2))
        await asyncio.sleep(0.05)  # the slow request is reading its tokenizer
        started = time.monotonic()
        fast = await run(kernel, model="tiny-gpt2", prompt="hello", max_tokens=2)
        fast_s = time.monotonic() - started
        assert max(stalls) < slow_s / 2, "the event loop stalled while a tokenizer was read"
        assert fast_s < slow_s / 2 and not slow.done()
        slow_result = await slow
        ticking.cancel()
    assert fast.usage.completion_tokens == 2 and slow_result.usage.completion_tokens == 2
    assert slow_result.model == "tiny-llama"
