"""Kernel overhead: the full adyton pipeline (adyton-openai wire format,
scripted backend yielding 4 tokens instantly) versus a bare Quart route
returning the same JSON, both on hypercorn on loopback, side by side in one
run (alternating rounds). Target: pipeline >= 0.6x the bare route's req/s.

    .venv/bin/python tests/bench/kernel_overhead.py [--requests N] [--concurrency C] [--rounds R] [--attribute]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import Server, run_load  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--attribute", action="store_true",
                        help="also measure the bare route inside the adyton app (its middleware, no pipeline)")
    args = parser.parse_args()
    paths = {"bare": "/v1/chat/completions", "pipeline": "/v1/chat/completions"}
    if args.attribute:
        paths["adyton-bare"] = "/bare/v1/chat/completions"
    results: dict[str, list[dict]] = {kind: [] for kind in paths}
    for _ in range(args.rounds):
        for kind, path in paths.items():
            with Server(kind) as server:
                r = run_load(server.port, path, BODY, requests=args.requests, concurrency=args.concurrency)
            assert r["non_200"] == 0, r
            results[kind].append(r)
            print(f"  {kind:11s} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms")
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms", "p99_ms")}
               for k, v in results.items()}
    ratio = summary["pipeline"]["rps"] / summary["bare"]["rps"]
    for kind, s in summary.items():
        print(f"{kind:11s} median {s['rps']:8.0f} req/s   p50 {s['p50_ms']:6.2f} ms   p99 {s['p99_ms']:6.2f} ms")
    verdict = "PASS" if ratio >= args.target else "FAIL"
    print(f"ratio pipeline/bare req/s = {ratio:.2f}  (target >= {args.target})  {verdict}")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
