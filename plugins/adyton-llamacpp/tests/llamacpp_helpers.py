"""Helpers shared by the adyton-llamacpp tests (a uniquely named module: the
name ``conftest`` is taken by other test directories too): Gemma 3 270M (a
second architecture, ADYTON_TEST_MODEL_GEMMA3 or ``$ADYTON_HOME/test-models``,
where ``make test`` pulls it) and servers of the ``llamacpp`` backend on
loopback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

import adyton_llamacpp
from adyton import create_app
from adyton.settings import default_home
from adyton.testing import JsonTestWirePlugin, ServerThread, require_model

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def gemma_path() -> Path:
    configured = os.environ.get("ADYTON_TEST_MODEL_GEMMA3")
    if configured:
        return Path(configured)
    home = Path(os.environ.get("ADYTON_HOME") or default_home())
    return home / "test-models" / GEMMA_FILE


def require_gemma() -> Path:
    path = gemma_path()
    return require_model(path, f"set ADYTON_TEST_MODEL_GEMMA3, or run: adyton llamacpp pull gemma3 "
                               f"--models-dir {path.parent}")


def start_server(home: Path, models_dir: Path, *, plugins=(), **llamacpp) -> ServerThread:
    settings = {"home": str(home), "log_level": "warning",
                "llamacpp": {"models_dir": str(models_dir), "threads": 1, **llamacpp}}
    app = create_app(settings=settings, plugins=[adyton_llamacpp, JsonTestWirePlugin(), *plugins],
                     load_entrypoints=False)
    srv = ServerThread(app).start()
    srv.kernel = app.extensions["adyton"]
    srv.backend = srv.kernel.backends["llamacpp"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first model loads at start: /health is 503 until then
        if httpx.get(srv.base_url + "/health").status_code == 200:
            break
        time.sleep(0.05)
    return srv


def generate(srv, body: dict, timeout: float = 300) -> dict:
    r = httpx.post(srv.base_url + "/t/generate", json={"temperature": 0, **body}, timeout=timeout)
    data = r.json()
    data["status"] = r.status_code
    return data


def stream(srv, body: dict, timeout: float = 300) -> tuple[str, list[dict]]:
    """The streamed text and every NDJSON line."""
    with httpx.stream("POST", srv.base_url + "/t/generate",
                      json={"temperature": 0, **body, "stream": True}, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        raw = b"".join(r.iter_bytes())
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    return "".join(x.get("text", "") for x in lines), lines


def chat(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]
