"""The objects a serving app is built from stay out of the cyclic collector's
full passes while it serves (no tens-of-ms stalls for requests in flight),
and are given back when it stops (a process serving apps in turn can still
collect a finished one)."""

from __future__ import annotations

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
