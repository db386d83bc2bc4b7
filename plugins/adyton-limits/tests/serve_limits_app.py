"""Serve an app with ScriptedBackend + adyton-limits + the test wire format
(for the kill -9 test). Usage: serve_limits_app.py HOME PORT [STORAGE_URI]"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hypercorn.asyncio import serve  # noqa: E402
from hypercorn.config import Config  # noqa: E402
from limits_testwire import TestWirePlugin  # noqa: E402

from adyton import create_app  # noqa: E402
from adyton.testing import BackendPlugin, ScriptedBackend  # noqa: E402
from adyton_limits import LimitsPlugin  # noqa: E402

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
        plugins=[TestWirePlugin(), BackendPlugin(backend), LimitsPlugin()],
        load_entrypoints=False,
    )
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
