"""Helpers for the fault tests of ``tests/reliability`` (a uniquely named
module, so it never collides with another directory's helpers): apps with
the real wire formats, adyton-limits and a scripted backend on a loopback
port, raw-socket clients that leave early, a real redis-server, and the
ledger read straight from SQLite."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import adyton_axiom
import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, RedisServer, ScriptedBackend, ServerProcess, ServerThread
from adyton_limits import LimitsPlugin, service_for

BIG = {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000, "requests_per_day": 1_000_000,
       "tokens_per_day": 1_000_000_000, "concurrent_requests": 1000}


def tier(**over: int) -> dict[str, int]:
    return {**BIG, **over}


def limits_app(home: Path, backend: ScriptedBackend, *, tiers: dict | None = None,
               limits: dict | None = None, settings: dict | None = None) -> Any:
    """The OpenAI and Axiom wire formats + adyton-limits + ``backend``."""
    lim: dict[str, Any] = {"upgrade": {"enabled": False}}
    if tiers is not None:  # else: the default tier table
        lim["tiers"] = tiers
    lim.update(limits or {})
    merged: dict[str, Any] = {"home": str(home), "queue": {"max_waiting": 50, "max_wait_s": 60},
                              "limits": lim}
    merged.update(settings or {})
    return create_app(settings=merged, plugins=[adyton_openai, adyton_axiom, BackendPlugin(backend),
                                                LimitsPlugin()], load_entrypoints=False)


def kernel_of(app: Any) -> Any:
    return app.extensions["adyton"]


def new_account(app: Any, tier_n: int = 1) -> Any:
    svc = service_for(kernel_of(app))
    svc.open_store()
    return svc.store.create_account(tier_n, "faults")


def raw_post(port: int, path: str, body: dict, headers: dict[str, str] | None = None) -> socket.socket:
    """Send a POST over a bare socket and return it unread (the caller closes
    it to go away)."""
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def ledger(db: Path, account_id: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM ledger WHERE account_id = ? ORDER BY id", (account_id,)).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


#: ``with redis_server() as redis:``: a real redis-server owned by one test (it may be
#: paused, killed and restarted)
redis_server = RedisServer


@contextlib.contextmanager
def serving(app: Any) -> Iterator[ServerThread]:
    with ServerThread(app) as server:
        yield server


def start_server(port: int, settings: dict, delay_s: float = 0.002) -> subprocess.Popen:
    """``faults_app`` in its own process, answering /health."""
    server = ServerProcess("faults_app:make_app", {"settings": settings, "delay_s": delay_s}, port=port,
                           path=Path(__file__).parent).start()
    assert server.proc is not None
    return server.proc


def live_slots(redis: RedisServer, key: str) -> int:
    """In-flight slot entries of ``key`` whose lease has not run out (Redis's clock)."""
    secs, micros = redis.command("TIME")
    now_ms = int(secs) * 1000 + int(micros) // 1000
    return int(redis.command("ZCOUNT", key, f"({now_ms}", "+inf"))
