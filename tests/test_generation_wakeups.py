"""How often the engine thread wakes the event loop for one generation's
events: a streaming consumer is woken as its tokens come (coalesced while a
wake-up is pending), a non-streaming one (``Generation.result``) not at all
by them — it needs only the end, which comes from the loop, and then takes
every event at once."""

from __future__ import annotations

from adyton import Credentials, GenerationRequest, TextDelta
from adyton.channel import _Channel
from adyton.testing import ScriptedBackend

TOKENS = ["a", "b", "c", "d", "e", "f"]


def _count_thread_wakes(monkeypatch) -> list[int]:
    wakes: list[int] = []
    original = _Channel._wake_from_thread

    def counting(self: _Channel) -> None:
        wakes.append(1)
        original(self)

    monkeypatch.setattr(_Channel, "_wake_from_thread", counting)
    return wakes


def _request() -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": "hi"}], temperature=0)


async def test_a_non_streaming_result_is_woken_once_at_the_end(make_app, monkeypatch):
    wakes = _count_thread_wakes(monkeypatch)
    app = make_app(ScriptedBackend(TOKENS, delay_s=0.005))  # an engine thread, tokens 5 ms apart
    async with app.test_app():
        kernel = app.extensions["adyton"]
        generation = await kernel.submit(_request(), Credentials())
        result = await generation.result()
        assert result.choices[0].text == "".join(TOKENS)
        assert result.usage.completion_tokens == len(TOKENS)
        assert wakes == []


async def test_a_stream_is_woken_as_its_tokens_come(make_app, monkeypatch):
    wakes = _count_thread_wakes(monkeypatch)
    app = make_app(ScriptedBackend(TOKENS, delay_s=0.005))
    async with app.test_app():
        kernel = app.extensions["adyton"]
        generation = await kernel.submit(_request(), Credentials())
        texts = [event.text async for event in generation if isinstance(event, TextDelta)]
        assert "".join(texts) == "".join(TOKENS)
        assert len(wakes) >= len(TOKENS) // 2  # (a wake-up may carry more than one token)
