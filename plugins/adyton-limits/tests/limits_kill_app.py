"""The app of the kill -9 test: ScriptedBackend + adyton-limits + the test
wire format, served in its own process by ``adyton.testing.ServerProcess``
(``ServerProcess("limits_kill_app:make_app", {"home": ..., "uri": ...})``)."""

from __future__ import annotations

from typing import Any

from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend
from adyton_limits import LimitsPlugin

TIER = {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000, "requests_per_day": 100_000,
        "tokens_per_day": 100_000_000, "concurrent_requests": 1000}


def make_app(home: str, uri: str = "memory://") -> Any:
    backend = ScriptedBackend(("a", " b", " c", " d", " e"), delay_s=0.002, max_concurrency=4)
    return create_app(
        settings={"home": home, "queue": {"max_waiting": 500},
                  "limits": {"storage_uri": uri, "tiers": {1: TIER}, "upgrade": {"enabled": False}}},
        plugins=[JsonTestWirePlugin(), BackendPlugin(backend), LimitsPlugin()],
        load_entrypoints=False,
    )
