"""`adyton serve` as a user runs it: a subprocess that prints where it
listens, answers /health, warns when anonymous on a public address, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from adyton.testing import free_port


def start(tmp_path, *args, env=None):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adyton.cli", "serve", "--port", str(port), *args],
        env={**os.environ, "ADYTON_HOME": str(tmp_path), "ADYTON_LOAD_PLUGINS": "", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, port, r
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stdout.read())


def test_serve_prints_url_and_answers_health(tmp_path):
    proc, port, r = start(tmp_path)
    try:
        assert r.status_code == 200 and r.json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert f"adyton listening on http://127.0.0.1:{port}" in out
    assert f"curl http://127.0.0.1:{port}/health" in out


def test_serve_warns_when_anonymous_on_a_public_address(tmp_path):
    proc, _port, _r = start(tmp_path, "--host", "0.0.0.0")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert "no auth plugin is installed and the server binds 0.0.0.0" in out
