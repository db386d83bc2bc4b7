"""Serve an app with ScriptedBackend + adyton-limits + the test wire format
(for the kill -9 test). Usage: serve_limits_app.py HOME PORT [STORAGE_URI]"""

from __future__ import annotations

import asyncio
import logging
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend
from adyton_limits import LimitsPlugin

TIER = {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000, "requests_per_day": 100_000,
        "tokens_per_day": 100_000_000, "concurrent_requests": 1000}


def main() -> None:
    home, port = sys.argv[1], int(sys.argv[2])
    uri = sys.argv[3] if len(sys.argv) > 3 else "memory://"
    logging.basicConfig(level=logging.INFO)
    backend = ScriptedBackend(("a", " b", " c", " d", " e"), delay_s=0.002, max_concurrency=4)
    app = create_app(
        settings={"home": home, "queue": {"max_waiting": 500},
                  "limits": {"storage_uri": uri, "tiers": {1: TIER}, "upgrade": {"enabled": False}}},
        plugins=[JsonTestWirePlugin(), BackendPlugin(backend), LimitsPlugin()],
        load_entrypoints=False,
    )
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
