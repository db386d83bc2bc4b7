"""What storing /v1/responses in the kernel's database costs a request.

    .venv/bin/python plugins/adyton-openai/bench/responses_store.py [-n 400] [--postgres]

One adyton app (adyton-openai, a ScriptedBackend answering "Hello, world!")
on a loopback hypercorn port, driven by one httpx client with keep-alive;
rounds alternate three non-streaming requests and time each end to end:

* ``store: false``: no database work (the baseline);
* ``store: true``: one write transaction (insert, purge, eviction check);
* ``previous_response_id`` of a fixed response, stored: a read-and-touch
  transaction before the generation and a write after it.

Prints p50/p99 in ms and the medians' difference to the baseline: what the
store adds. The database is the default SQLite file in a temp home, or with
``--postgres`` a throwaway PostgreSQL (``adyton.testing.postgres``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import httpx

import adyton_openai
from adyton.testing import LoopbackServers, ScriptedBackend
from adyton.testing.postgres import start_postgres


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=400, help="rounds (each: one request of every kind)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args()
    pg = start_postgres() if args.postgres else None
    try:
        with tempfile.TemporaryDirectory() as home:
            settings = {"database": {"url": pg.create_database()}} if pg is not None else {}
            servers = LoopbackServers(os.path.join(home, "home"), adyton_openai)
            try:
                server = servers(ScriptedBackend(), settings=settings)
                run(server.base_url, args.n, "postgresql" if pg else "sqlite")
            finally:
                servers.stop_all()
    finally:
        if pg is not None:
            pg.stop()


def run(base_url: str, n: int, database: str) -> None:
    kinds = {"store: false": {"store": False}, "store: true": {}, "previous_response_id": None}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        def post(extra: dict) -> dict:
            r = client.post("/v1/responses", json={"model": "scripted-model", "input": "hi there", **extra})
            r.raise_for_status()
            return r.json()

        anchor = post({})["id"]
        kinds["previous_response_id"] = {"previous_response_id": anchor}
        for _ in range(20):  # warm up
            for extra in kinds.values():
                post(extra or {})
        for _ in range(n):
            for kind, extra in kinds.items():
                t0 = time.perf_counter()
                post(extra or {})
                times[kind].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times["store: false"])
    print(f"{database}, {n} rounds, load average {os.getloadavg()[0]:.2f}")
    for kind, values in times.items():
        p50 = statistics.median(values)
        print(f"  {kind:22s} p50 {p50:6.2f} ms  p99 {pct(values, 99):6.2f} ms  (+{p50 - base:.2f} ms)")


if __name__ == "__main__":
    main()
