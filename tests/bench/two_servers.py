"""Two adyton servers behind nginx vs one, same run: requests/s on the
scripted backend (issue #16 target: two ≥ 1.7× one).

The deployment of docs/deploy.md ("Several machines") on this machine, from
the files in deploy/ (tests/deploy/deploy_stack.py): PostgreSQL (accounts and
the ledger: one row per request), Redis (counters and in-flight slots),
adyton servers started with the environment of deploy/systemd/adyton@.service
(plugins openai, axiom, limits, guided, upstream; the shared settings file)
and nginx with deploy/nginx/adyton.conf. Each server's model is a scripted
backend (four tokens, no delay: ``_servers.py deployed``), so what is
measured is adyton's own work per request: HTTP, auth, reserve in Redis, the
pipeline, settle with its ledger row in PostgreSQL.

Two nginx instances run side by side: one whose upstream block lists server
A only, one listing A and B. wrk (Debian's package) loads them in turn
(``--rounds`` alternating rounds); medians are compared.

    make bench-two-servers        # installs what it needs (redis, postgresql, nginx, wrk), then runs:
    .venv/bin/python tests/bench/two_servers.py [--duration 10] [--connections 32] [--rounds 3]

It also prints the CPU each part used during each phase (cores busy =
CPU seconds / wall seconds, from /proc): on a machine with fewer free cores
than the parts need (two adyton servers alone can use two), the ratio is
bounded by the cores, not by adyton.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "deploy"))
from deploy_stack import VENV, Stack, free_port, http  # noqa: E402 - after the sys.path line

BODY = '{"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
#: the benchmark's tier 1: no limit gets in the way of the load
UNLIMITED = """
[limits.tiers.1]
requests_per_minute = 0
tokens_per_minute = 0
requests_per_day = 0
tokens_per_day = 0
concurrent_requests = 0
max_n = 0
max_tokens_per_request = 0

[limits.upgrade]
enabled = false
"""


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(stat[11]) + int(stat[12])) / tick
        for tid in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                total += cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine used so far (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postmaster_pid(stack: Stack) -> int:
    return int((stack.postgres.data_dir / "postmaster.pid").read_text().split()[0])


def run_wrk(wrk: str, url: str, key: str, duration: float, connections: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    body = BODY.replace("'", "\\'")
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
                      "wrk.headers['Content-Type'] = 'application/json'\n"
                      f"wrk.headers['Authorization'] = 'Bearer {key}'\n")
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script),
                          url + "/v1/chat/completions"], capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": rps, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "errors": errors.group(0) if errors else "", "p50_ms": float(p50.group(1)) * scale[p50.group(2)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per phase (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating one/two rounds (default 3)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (default auto)")
    parser.add_argument("--target", type=float, default=1.7)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, configs)")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: make wrk (Debian's package)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="adyton-two-servers-"))
    print(f"run directory: {root}")
    try:
        with Stack(root) as stack:
            redis = stack.start_redis()
            database = stack.start_postgres()
            stack.install_settings({
                ("database", "url"): database,
                ("limits", "storage_uri"): redis,
                ("limits", "admin_key_file"): str(stack.etc / "admin.key"),
                # no engines in this benchmark: a replica that refuses (the scripted model is served)
                ("upstream.models.smollm2", "replicas"): [f"http://127.0.0.1:{free_port()}"],
            }, extra=UNLIMITED)
            # the unit's environment and settings; its command plus the scripted model
            command = [str(VENV / "bin" / "python"), str(HERE / "_servers.py"), "deployed"]
            a = stack.start_server("a", argv=command, env={"ADYTON_LOG_LEVEL": "warning"}, wait=False)
            stack.start_server("b", argv=command, env={"ADYTON_LOG_LEVEL": "warning"}, wait=False)
            stack.wait_healthy("a")
            stack.wait_healthy("b")
            one = stack.start_nginx(["a"], workers=args.nginx_workers, name="nginx-one")
            two = stack.start_nginx(["a", "b"], workers=args.nginx_workers, name="nginx-two")
            status, _, acct = http("POST", a + "/admin/accounts", {"tier": 1, "name": "bench"},
                                   {"Authorization": f"Bearer {stack.admin_key}"})
            if status != 201:
                raise RuntimeError(f"could not create the account: {status} {acct}")
            parts = {"adyton A": stack.servers["a"].pid, "adyton B": stack.servers["b"].pid,
                     "nginx": None, "redis": next(p.pid for p in stack.procs if p.name == "redis"),
                     "postgres": postmaster_pid(stack)}
            results: dict[str, list[dict]] = {"one": [], "two": []}
            for rnd in range(args.rounds):
                for phase, url, nginx in (("one", one, "nginx-one"), ("two", two, "nginx-two")):
                    parts["nginx"] = stack.servers[nginx].pid
                    before = {name: cpu_seconds(pid) for name, pid in parts.items()}
                    before["wrk"], before["machine"] = children_cpu_seconds(), machine_busy_seconds()
                    t0 = time.monotonic()
                    r = run_wrk(wrk, url, acct["api_key"], args.duration, args.connections, root)
                    wall = time.monotonic() - t0
                    r["cores"] = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in parts.items()}
                    r["cores"]["wrk"] = (children_cpu_seconds() - before["wrk"]) / wall
                    r["cores"]["whole machine"] = (machine_busy_seconds() - before["machine"]) / wall
                    results[phase].append(r)
                    cores = "  ".join(f"{n} {c:4.2f}" for n, c in r["cores"].items())
                    print(f"round {rnd + 1} {phase}: {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"non-2xx {r['non_2xx']}  {r['errors']}\n    cores busy: {cores}")
                    if r["non_2xx"]:
                        print(f"    ! {r['non_2xx']} answers were not 200: see {root}/logs", file=sys.stderr)
            one_rps = statistics.median(r["rps"] for r in results["one"])
            two_rps = statistics.median(r["rps"] for r in results["two"])
            ratio = two_rps / one_rps
            print(f"\none server : {one_rps:7.0f} req/s (median of {args.rounds})")
            print(f"two servers: {two_rps:7.0f} req/s (median of {args.rounds})")
            print(f"ratio      : {ratio:.2f}x  (target >= {args.target}x) on {os.cpu_count()} cores: "
                  f"{'met' if ratio >= args.target else 'NOT met'}")
            bad = sum(r["non_2xx"] for rs in results.values() for r in rs)
            return 0 if bad == 0 else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
