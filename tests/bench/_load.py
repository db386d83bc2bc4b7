"""A small HTTP/1.1 keep-alive load generator on asyncio streams (low client
overhead, so the server is what gets measured)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from adyton.testing import free_port

HERE = Path(__file__).resolve().parent


def wait_for_port(proc: subprocess.Popen, port: int, timeout: float, what: str) -> None:
    """Return once ``port`` on 127.0.0.1 accepts connections; RuntimeError
    (and the process killed) if ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


class Server:
    def __init__(self, kind: str, env: dict | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_servers.py"), self.kind, str(self.port)],
                                     env=self.env)
        wait_for_port(self.proc, self.port, 30, f"{self.kind} server")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def process_counters(pid: int) -> tuple[float, int, int]:
    """CPU seconds, voluntary and involuntary context switches of a process,
    summed over its threads (Linux /proc)."""
    cpu, voluntary, involuntary = 0.0, 0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:  # the thread just ended
            continue
        cpu += (int(stat[11]) + int(stat[12])) / tick
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return cpu, voluntary, involuntary


async def _worker(port: int, request: bytes, count: int, latencies: list[float], statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(request)
        status_line = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        statuses.append(int(status_line.split()[1]))
    writer.close()


def run_load(port: int, path: str, body: dict, *, requests: int, concurrency: int,
             headers: dict | None = None) -> dict:
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for key, value in (headers or {}).items():
        head += f"{key}: {value}\r\n"
    request = (head + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    latencies: list[float] = []
    statuses: list[int] = []
    per_worker = requests // concurrency

    async def main() -> float:
        # warm-up
        await _worker(port, request, 20, [], [])
        t0 = time.perf_counter()
        await asyncio.gather(*[_worker(port, request, per_worker, latencies, statuses) for _ in range(concurrency)])
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    latencies.sort()
    bad = sum(1 for s in statuses if s != 200)
    return {
        "requests": len(latencies) + 20,  # (+ the warm-up, which the process counters also see)
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "non_200": bad,
    }
