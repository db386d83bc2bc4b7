"""Servers the benchmarks start in subprocesses: `python _servers.py KIND PORT`.

bare      a bare Quart route returning the same JSON an OpenAI chat completion has
pipeline  the full adyton pipeline (adyton-openai if installed, scripted backend
          that yields its tokens instantly; it never blocks, so it declares
          ``runs_inline`` and its jobs run on the event loop)
pipeline-thread  the same, with the backend's jobs on an engine thread (what
          every blocking engine gets: the thread hand-off on top)
adyton-bare  the pipeline app, plus the bare route at /bare/v1/chat/completions:
          what the adyton app's own middleware costs, without the pipeline
deployed  `adyton serve` as deploy/systemd/adyton@.service runs it (settings from
          ADYTON_CONFIG and ADYTON_* variables, installed plugins from
          ADYTON_LOAD_PLUGINS; the port from the settings when PORT is left out),
          plus a scripted backend ("scripted-model"): two_servers.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from hypercorn.asyncio import serve
from hypercorn.config import Config


def bare_app():
    from quart import Quart, jsonify, request

    app = Quart("bare")

    @app.post("/v1/chat/completions")
    async def chat():
        body = await request.get_json()
        assert body["messages"]
        return jsonify({
            "id": "chatcmpl-0", "object": "chat.completion", "created": int(time.time()), "model": "scripted-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world!"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
        })

    return app


def pipeline_app(extra_plugins=(), inline=True):
    import adyton_openai
    from adyton import create_app
    from adyton.testing import BackendPlugin, ScriptedBackend

    return create_app(
        settings={"home": "/tmp/adyton-bench-home", "log_level": "warning",
                  "queue": {"max_waiting": 1000}},
        plugins=[adyton_openai,
                 BackendPlugin(ScriptedBackend(["Hello", ",", " world", "!"], runs_inline=inline,
                                               max_concurrency=int(os.environ.get("BENCH_CONCURRENCY", "1")))),
                 *extra_plugins],
        load_entrypoints=False,
    )


def deployed_app():
    from adyton import create_app
    from adyton.testing import BackendPlugin, ScriptedBackend

    backend = ScriptedBackend(["Hello", ",", " world", "!"], max_concurrency=8)
    return create_app(plugins=[BackendPlugin(backend)], config=os.environ.get("ADYTON_CONFIG"))


def main() -> None:
    kind = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    if kind == "bare":
        app = bare_app()
    elif kind == "pipeline":
        app = pipeline_app()
    elif kind == "pipeline-thread":
        app = pipeline_app(inline=False)
    elif kind == "adyton-bare":  # the bare route inside an adyton app: framework cost, no pipeline
        app = pipeline_app()
        bare = bare_app()
        app.add_url_rule("/bare/v1/chat/completions", "bare_chat",
                         bare.view_functions["chat"], methods=["POST"])
    elif kind == "pipeline+limits":
        import adyton_limits
        app = pipeline_app([adyton_limits])
    elif kind == "deployed":
        app = deployed_app()
    else:
        raise SystemExit(f"unknown server kind {kind}")
    config = Config()
    if port is None:
        settings = app.extensions["adyton"].settings
        config.bind = [f"{settings.server.host}:{settings.server.port}"]
    else:
        config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(run())", globals(), locals(), profile)
    else:
        asyncio.run(run())


if __name__ == "__main__":
    main()
