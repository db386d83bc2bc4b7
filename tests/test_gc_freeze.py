"""The objects a serving app is built from stay out of the cyclic collector's
full passes while it serves (no tens-of-ms stalls for requests in flight),
and are given back when it stops (a process serving apps in turn can still
collect a finished one)."""

from __future__ import annotations

import asyncio
import gc

from adyton import create_app


async def test_startup_freezes_and_shutdown_unfreezes():
    gc.unfreeze()
    app = create_app(load_entrypoints=False, settings={"models": {"load_at_start": False}})
    async with app.test_app():
        assert gc.get_freeze_count() > 0
        async with app.test_client() as client:
            assert (await client.get("/health")).status_code == 200
    assert gc.get_freeze_count() == 0


async def test_a_request_leaves_no_reference_cycle(make_app, monkeypatch):
    """A finished request's objects (its Generation, task, Quart request and
    contexts) are freed by reference counting, not left as a cycle for the
    collector, which would stall the loop to walk them every few requests."""
    import weakref

    from adyton.generation import Generation

    started: list[weakref.ref[Generation]] = []
    original_start = Generation.start

    def start(self: Generation) -> None:
        started.append(weakref.ref(self))
        original_start(self)

    monkeypatch.setattr(Generation, "start", start)
    app = make_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        assert (await client.post("/t/generate", json=body)).status_code == 200  # warm
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                r = await client.post("/t/generate", json=body)
                assert r.status_code == 200
                assert (await r.get_json())["choices"][0]["text"] == "Hello, world!"
            assert len(started) == 4
            # (the kernel forgets a finished task in a done callback, the
            # engine thread its last job once it has handed the result over)
            for _ in range(100):
                if all(ref() is None for ref in started[1:]):
                    break
                await asyncio.sleep(0.01)
            assert [ref() for ref in started[1:]] == [None, None, None]
        finally:
            gc.enable()
