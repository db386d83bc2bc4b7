"""Kernel overhead without the network: the servers of ``kernel_overhead.py``
(``_servers.py``) driven in this process through their ASGI callable, one
request at a time, so the CPU a request costs the app is measured without
hypercorn, sockets or the load generator (steadier than req/s on a shared
machine, and what a cut has to move).

    .venv/bin/python tests/bench/kernel_inprocess.py [--blocks B] [--size N]
        [--profile FILE] [--garbage]

Prints, per kind (bare, adyton-bare, pipeline, pipeline-thread), the CPU
microseconds per request over B alternating blocks of N requests (min and
median: the min is the least disturbed by other processes), with the
cyclic collector's passes. --profile writes a cProfile of the pipeline kind
(``python -m pstats FILE``); --garbage counts the objects a pipeline request
leaves to the cyclic collector (0 but a handful of Quart's own: a request
must be freed by reference counting).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import bare_app, pipeline_app
from kernel_overhead import BODY

PAYLOAD = json.dumps(BODY).encode()
PATHS = {"bare": "/v1/chat/completions", "adyton-bare": "/bare/v1/chat/completions",
         "pipeline": "/v1/chat/completions", "pipeline-thread": "/v1/chat/completions"}


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                          (b"content-length", str(len(PAYLOAD)).encode())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "extensions": {}}


async def request(app: Any, path: str) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": PAYLOAD, "more_body": False}
        await asyncio.Event().wait()  # (the client never leaves)
        raise AssertionError

    status = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(path), receive, send)
    assert status == [200], status


def make(kind: str) -> Any:
    if kind == "bare":
        return bare_app()
    if kind == "pipeline-thread":
        return pipeline_app(inline=False)
    app = pipeline_app()
    if kind == "adyton-bare":
        app.add_url_rule(PATHS[kind], "bare_chat", bare_app().view_functions["chat"], methods=["POST"])
    return app


async def main(args: argparse.Namespace) -> None:
    apps = {kind: make(kind) for kind in PATHS}
    for kind, app in apps.items():
        await app.startup()
        for _ in range(200):
            await request(app, PATHS[kind])
    collections_seen = {kind: [0, 0, 0] for kind in apps}
    current = [""]

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and current[0]:
            collections_seen[current[0]][info["generation"]] += 1

    gc.callbacks.append(count)
    cpu: dict[str, list[float]] = {kind: [] for kind in apps}
    for _ in range(args.blocks):
        for kind, app in apps.items():
            current[0] = kind
            t0 = time.process_time()
            for _ in range(args.size):
                await request(app, PATHS[kind])
            cpu[kind].append(1e6 * (time.process_time() - t0) / args.size)
            current[0] = ""
    gc.callbacks.remove(count)
    total = args.blocks * args.size
    for kind, values in cpu.items():
        passes = "/".join(str(n) for n in collections_seen[kind])
        print(f"{kind:16s} CPU us/request min {min(values):6.1f}  median {statistics.median(values):6.1f}"
              f"   gc passes (gen 0/1/2) per 1000 requests "
              f"{'/'.join(f'{1000 * n / total:.1f}' for n in collections_seen[kind])} ({passes})")
    print(f"ratio bare/pipeline of the mins {min(cpu['bare']) / min(cpu['pipeline']):.2f}, "
          f"bare/pipeline-thread {min(cpu['bare']) / min(cpu['pipeline-thread']):.2f}")
    if args.garbage:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(100):
            await request(apps["pipeline"], PATHS["pipeline"])
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        gc.set_debug(0)
        print(f"cyclic garbage per pipeline request: {len(gc.garbage) / 100:.1f} objects "
              f"({', '.join(f'{name} {n / 100:g}' for name, n in kinds.most_common(8))})")
        gc.garbage.clear()
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.size * 4):
            await request(apps["pipeline"], PATHS["pipeline"])
        profile.disable()
        profile.dump_stats(args.profile)
        print(f"cProfile of {args.size * 4} pipeline requests: {args.profile}")
    for app in apps.values():
        await app.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--profile", help="write a cProfile of the pipeline kind here")
    parser.add_argument("--garbage", action="store_true", help="count a pipeline request's cyclic garbage")
    asyncio.run(main(parser.parse_args()))
