"""Kernel overhead: the full adyton pipeline (adyton-openai wire format,
scripted backend yielding 4 tokens instantly) versus a bare Quart route
returning the same JSON, both on hypercorn on loopback, side by side in one
run (alternating rounds). Target: pipeline >= 0.6x the bare route's req/s.

    .venv/bin/python tests/bench/kernel_overhead.py [--requests N] [--concurrency C] [--rounds R]
        [--attribute] [--engine-thread] [--cpu]

The scripted backend never blocks and declares ``runs_inline``: its jobs run
on the event loop. --engine-thread also measures it on an engine thread, as
every blocking engine runs: the kernel's path plus the thread hand-off.

--cpu adds the server process's CPU time and context switches per request
(all its threads, from /proc): the pipeline is CPU-bound, so this is what an
optimisation has to move.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import Server, process_counters, run_load

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--attribute", action="store_true",
                        help="also measure the bare route inside the adyton app (its middleware, no pipeline)")
    parser.add_argument("--engine-thread", action="store_true",
                        help="also measure the scripted backend on an engine thread (pipeline-thread)")
    parser.add_argument("--cpu", action="store_true",
                        help="also print server CPU microseconds and context switches per request")
    args = parser.parse_args()
    paths = {"bare": "/v1/chat/completions", "pipeline": "/v1/chat/completions"}
    if args.attribute:
        paths["adyton-bare"] = "/bare/v1/chat/completions"
    if args.engine_thread:
        paths["pipeline-thread"] = "/v1/chat/completions"
    results: dict[str, list[dict]] = {kind: [] for kind in paths}
    for _ in range(args.rounds):
        for kind, path in paths.items():
            with Server(kind) as server:
                before = process_counters(server.proc.pid)
                r = run_load(server.port, path, BODY, requests=args.requests, concurrency=args.concurrency)
                after = process_counters(server.proc.pid)
            assert r["non_200"] == 0, r
            served = r["requests"]
            r["cpu_us"] = 1e6 * (after[0] - before[0]) / served
            r["switches"] = (after[1] - before[1] + after[2] - before[2]) / served
            results[kind].append(r)
            line = f"  {kind:15s} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms"
            if args.cpu:
                line += f"   cpu {r['cpu_us']:5.0f} us/req   {r['switches']:4.2f} ctx switches/req"
            print(line)
    metrics = ("rps", "p50_ms", "p99_ms", "cpu_us", "switches")
    summary = {k: {m: statistics.median(x[m] for x in v) for m in metrics} for k, v in results.items()}
    ratio = summary["pipeline"]["rps"] / summary["bare"]["rps"]
    for kind, s in summary.items():
        line = f"{kind:15s} median {s['rps']:8.0f} req/s   p50 {s['p50_ms']:6.2f} ms   p99 {s['p99_ms']:6.2f} ms"
        if args.cpu:
            line += f"   cpu {s['cpu_us']:5.0f} us/req   {s['switches']:4.2f} ctx switches/req"
        print(line)
    if args.engine_thread:
        threaded = summary["pipeline-thread"]["rps"] / summary["bare"]["rps"]
        print(f"ratio pipeline-thread/bare req/s = {threaded:.2f}  (a blocking engine's path, for comparison)")
    verdict = "PASS" if ratio >= args.target else "FAIL"
    print(f"ratio pipeline/bare req/s = {ratio:.2f}  (target >= {args.target})  {verdict}")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
