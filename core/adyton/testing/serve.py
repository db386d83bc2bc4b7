"""Serve an app made by a factory in this process, on 127.0.0.1 (what
``ServerProcess`` runs, for tests that ``kill -9`` the server):

    python -m adyton.testing.serve PORT MODULE:FACTORY [KWARGS_JSON]

``MODULE`` is imported (from the directory ``ServerProcess`` puts on
``PYTHONPATH``) and ``FACTORY(**KWARGS_JSON)`` must return the app."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    port, target = int(argv[0]), argv[1]
    kwargs = json.loads(argv[2]) if len(argv) == 3 else {}
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    logging.basicConfig(level=logging.INFO)
    app = factory(**kwargs)

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main(sys.argv[1:])
