"""Serve the whole first-party stack (``hostile_helpers.full_app``) with the
real default model in this process, on 127.0.0.1:PORT, for tests that must
not share a GIL with their clients (latency measurements). Prints one JSON
line with an account's credentials once the model is loaded; runs until
killed.

    python hostile_serve.py PORT HOME
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from hostile_helpers import full_app
from hypercorn.asyncio import serve
from hypercorn.config import Config

from adyton_limits import service_for


async def main(port: int, home: Path) -> None:
    # the model's whole context (8192), so that a 500k-character prompt is
    # one the backend must tokenize to know it does not fit
    app = full_app(home, settings={"llama": {"max_context": 8192}})
    kernel = app.extensions["adyton"]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    server = asyncio.ensure_future(serve(app, config))
    while kernel.models.loading is not None or not any(b.loaded_model() for b in kernel.backends.values()):
        if server.done():
            server.result()  # raises why it stopped
        await asyncio.sleep(0.1)
    service = service_for(kernel)
    new = service.store.create_account(3, "event-loop")
    print(json.dumps({"api_key": new.api_key, "account_number": new.account_number,
                      "model": kernel.models.default_model()[1].id,
                      "max_body_bytes": kernel.settings.server.max_body_bytes}), flush=True)
    await server


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
