"""Serve OpenAI + Axiom + adyton-limits + a scripted backend in its own
process, for the fault tests that kill the server with ``kill -9``.

Usage: faults_serve.py PORT SETTINGS_JSON [TOKEN_DELAY_S]"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

import adyton_axiom
import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend
from adyton_limits import LimitsPlugin


def main() -> None:
    port, settings = int(sys.argv[1]), json.loads(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.002
    logging.basicConfig(level=logging.INFO)
    backend = ScriptedBackend(["a"] * 400, delay_s=delay, max_concurrency=8, eos_at_end=False)
    app = create_app(settings=settings, load_entrypoints=False,
                     plugins=[adyton_openai, adyton_axiom, BackendPlugin(backend), LimitsPlugin()])
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
