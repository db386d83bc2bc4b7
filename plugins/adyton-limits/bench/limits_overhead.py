"""adyton-limits overhead per request: authenticate, reserve, settle (with its
ledger commit), with memory storage and with Redis. Prints p50/p99.

    .venv/bin/python plugins/adyton-limits/bench/limits_overhead.py [-n 2000] [--redis redis://127.0.0.1:6379]
        [--reads offload|inline|both] [--postgres]

``--reads``: the accounts lookups run on the kernel's worker threads
(``kernel.offload``, what the plugin does) or inline on the event loop (what
it did before), or both, one after the other. ``--postgres``: the accounts in
a throwaway PostgreSQL server (``adyton.testing.postgres``) instead of the
default SQLite file.

Without --redis, a throwaway redis-server is started on a free port (skipped
if redis-server is not installed). Runs in-process (no HTTP): the figures are
what the plugin adds to every request on top of the kernel's own path.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from adyton import RequestCost, Usage, create_app
from adyton.testing.postgres import PostgresServer, start_postgres
from adyton_limits import LimitsPlugin, service_for

# every limit on, none reached: the cost of checking all five counters
HUGE = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "requests_per_day": 10**9,
        "tokens_per_day": 10**12, "concurrent_requests": 10**6}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def run_one(storage_uri: str, n: int, concurrency: int, reads_inline: bool = False,
                  db_url: str | None = None) -> dict[str, list[float]]:
    home = Path(tempfile.mkdtemp(prefix="adyton-bench-"))
    limits = {"storage_uri": storage_uri, "key_prefix": f"bench{time.time_ns()}", "tiers": {1: HUGE},
              "upgrade": {"enabled": False}}
    if db_url:
        limits["db_url"] = db_url
    app = create_app(settings={"home": str(home), "models": {"load_at_start": False}, "limits": limits},
                     plugins=[LimitsPlugin()], load_entrypoints=False)
    await app.startup()
    try:
        svc = service_for(app.extensions["adyton"])
        svc.reads_inline = reads_inline
        accounts = [svc.store.create_account(1) for _ in range(concurrency)]
        limiter = svc.limiter
        auth: list[float] = []
        reserve: list[float] = []
        settle: list[float] = []
        total: list[float] = []

        async def client(key: str, count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                principal = await svc.authenticate("api_key", key)
                t1 = time.perf_counter()
                r = await limiter.reserve(principal, RequestCost("m", 20, 100, "bench"))
                t2 = time.perf_counter()
                await limiter.settle(r, Usage(prompt_tokens=20, completion_tokens=37), "ok")
                t3 = time.perf_counter()
                auth.append(t1 - t0)
                reserve.append(t2 - t1)
                settle.append(t3 - t2)
                total.append(t3 - t0)

        # warm-up
        await client(accounts[0].api_key, 50)
        for lst in (auth, reserve, settle, total):
            lst.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(a.api_key, n // concurrency) for a in accounts))
        elapsed = time.perf_counter() - started
        return {"authenticate": auth, "reserve": reserve, "settle (+ledger)": settle, "total": total,
                "_throughput": [len(total) / elapsed]}
    finally:
        await app.shutdown()
        shutil.rmtree(home, ignore_errors=True)


def start_redis() -> tuple[subprocess.Popen, str] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def report(name: str, results: dict[str, list[float]]) -> None:
    print(f"\n{name}  ({len(results['total'])} requests, {results['_throughput'][0]:.0f} req/s)")
    print(f"  {'step':<18}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for step, values in results.items():
        if step.startswith("_"):
            continue
        print(f"  {step:<18}{pct(values, 50) * 1e6:>10.0f}{pct(values, 99) * 1e6:>10.0f}"
              f"{statistics.fmean(values) * 1e6:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="requests per storage")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="concurrent clients (accounts)")
    parser.add_argument("--redis", default=None, help="redis://host:port (default: start one)")
    parser.add_argument("--reads", choices=("offload", "inline", "both"), default="both",
                        help="accounts lookups on the kernel's workers, on the event loop, or both")
    parser.add_argument("--postgres", action="store_true", help="accounts in a throwaway PostgreSQL server")
    args = parser.parse_args()
    modes = {"offload": [False], "inline": [True], "both": [False, True]}[args.reads]
    pg = start_postgres() if args.postgres else None
    try:
        run(args, modes, pg)
    finally:
        if pg is not None:
            pg.stop()


def run(args: argparse.Namespace, modes: list[bool], pg: PostgresServer | None) -> None:
    def one(uri: str) -> None:
        for inline in modes:
            db_url = pg.create_database() if pg is not None else None
            where = "postgresql" if db_url else "sqlite"
            name = f"{uri}, accounts on {where}, reads {'inline' if inline else 'offloaded'}"
            report(name, asyncio.run(run_one(uri, args.n, args.concurrency, inline, db_url)))

    one("memory://")
    started = None
    uri = args.redis
    if uri is None:
        started = start_redis()
        uri = started[1] if started else None
    if uri is None:
        print("\nredis: skipped (redis-server is not installed; make redis)")
        return
    try:
        one(uri)
    finally:
        if started:
            started[0].terminate()


if __name__ == "__main__":
    main()
