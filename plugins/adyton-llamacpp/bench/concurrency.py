"""Concurrent streaming clients against three servers on the same GGUF, side by side:

- adyton with adyton-llamacpp (continuous batching),
- adyton with adyton-llama (ctransformers, one request at a time),
- llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``), the peer.

For 1, 2, 4 and 8 concurrent clients (distinct prompts, greedy, ``max_tokens``
each with end-of-sequence banned, so every client streams exactly that many
tokens) it prints the aggregate decode rate (tokens of all clients / wall
time of the round) and p50/p95 time to first token, then each server's RSS
with the model loaded. Run it on an idle machine::

    .venv/bin/python plugins/adyton-llamacpp/bench/concurrency.py --setup-peer

``--setup-peer`` makes the peer's throw-away venv (``--peer-venv``, default
/tmp/adyton-bench-peer) with ``llama-cpp-python[server]==0.3.36``, built with
the same CMAKE_ARGS as the product (pip's wheel cache makes that quick after
``make llamacpp``); it is never installed into the product's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
TOPICS = ["the sea", "a mountain", "a city at night", "a cat", "the moon", "a library", "autumn", "a train",
          "a garden", "the desert", "a storm", "a bridge", "winter", "a market", "the forest", "a river"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, model: str) -> None:
        self.name, self.cmd, self.env, self.port, self.model = name, cmd, env, port, model
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read()[-2000:].decode(errors='replace')}")
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def one_client(client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int,
                     eos: int) -> tuple[float, int, float]:
    """(time to first token, tokens, end time) of one streamed chat."""
    body = {"model": server.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "logit_bias": {str(eos): -100}}
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", server.base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                tokens += 1
                if not first:
                    first = time.perf_counter() - start
    return first, tokens, time.perf_counter()


async def round_of(server: Server, clients: int, max_tokens: int, eos: int, offset: int) -> dict:
    prompts = [f"Write a long story about {TOPICS[(offset + i) % len(TOPICS)]} (story {offset + i})."
               for i in range(clients)]
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[one_client(client, server, p, max_tokens, eos) for p in prompts])
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    wall = max(r[2] for r in results) - start
    return {"tokens_per_s": tokens / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
            "tokens": tokens}


def adyton_server(name: str, plugins: str, section: dict, model_file: Path, model_id: str,
                  home: Path) -> Server:
    port = free_port()
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / model_file.name
    if not link.exists():
        link.symlink_to(model_file.resolve())
    env = {"ADYTON_HOME": str(home), "ADYTON_LOAD_PLUGINS": plugins, "ADYTON_LOG_LEVEL": "warning",
           "ADYTON_QUEUE__MAX_WAITING": "64", "ADYTON_QUEUE__MAX_WAIT_S": "600"}
    for key, value in section.items():
        env[key] = str(value)
    cmd = [str(ROOT / ".venv" / "bin" / "adyton"), "serve", "--port", str(port)]
    return Server(name, cmd, env, port, model_id)


def setup_peer(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import llama_cpp.server"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "llama-cpp-python[server]==0.3.36"],
                       env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS}, check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get(
        "ADYTON_TEST_MODEL", str(Path.home() / ".local/share/adyton/models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    parser.add_argument("--model-id", default="smollm2-135m-instruct")
    parser.add_argument("--eos", type=int, default=2, help="end-of-sequence id to ban (SmolLM2: 2)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--servers", default="llamacpp,llama,peer")
    parser.add_argument("--peer-venv", type=Path, default=Path("/tmp/adyton-bench-peer"))
    parser.add_argument("--setup-peer", action="store_true", help="create the peer's venv if missing")
    args = parser.parse_args()
    model = Path(args.model)
    levels = [int(x) for x in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="adyton-bench-"))
    servers: dict[str, Server] = {}
    wanted = args.servers.split(",")
    if "llamacpp" in wanted:
        servers["adyton-llamacpp"] = adyton_server(
            "adyton-llamacpp", "openai,llamacpp",
            {"ADYTON_LLAMACPP__SLOTS": args.slots, "ADYTON_LLAMACPP__THREADS": args.threads,
             "ADYTON_LLAMACPP__SLOT_CONTEXT": 1024}, model, args.model_id, work / "llamacpp")
    if "llama" in wanted:
        servers["adyton-llama"] = adyton_server(
            "adyton-llama", "openai,llama", {"ADYTON_LLAMA__THREADS": args.threads}, model, args.model_id,
            work / "llama")
    if "peer" in wanted:
        python = setup_peer(args.peer_venv) if args.setup_peer else args.peer_venv / "bin" / "python"
        if not python.exists():
            sys.exit(f"no peer venv at {args.peer_venv}: run with --setup-peer")
        port = free_port()
        servers["llama_cpp.server"] = Server(
            "llama_cpp.server",
            [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--n_threads", str(args.threads), "--n_ctx", "2048",
             "--model_alias", args.model_id,
             # its default cuts a running stream off when another request arrives
             "--interrupt_requests", "False"],
            {}, port, args.model_id)
    results: dict[str, dict] = {}
    for name, server in servers.items():
        with server:
            asyncio.run(round_of(server, 1, 8, args.eos, 900))  # warm-up (weights paged in)
            rows = {}
            for i, clients in enumerate(levels):
                rows[clients] = asyncio.run(round_of(server, clients, args.max_tokens, args.eos, 100 * i))
                if rows[clients]["tokens"] != clients * args.max_tokens:
                    print(f"  WARNING {name}: {clients} clients streamed {rows[clients]['tokens']} tokens, "
                          f"not {clients * args.max_tokens}", file=sys.stderr)
                print(f"  {name}: {clients} clients: {rows[clients]['tokens_per_s']:.1f} tok/s, "
                      f"TTFT p50 {rows[clients]['ttft_p50']:.3f} s p95 {rows[clients]['ttft_p95']:.3f} s",
                      file=sys.stderr, flush=True)
            results[name] = {"rows": rows, "rss_mb": rss_mb(server.proc.pid)}
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.max_tokens} tokens per client, greedy, distinct prompts, {args.threads} threads; "
          f"model {model.name}\n")
    header = "| server | " + " | ".join(f"{c} clients: tok/s, TTFT p50/p95 s" for c in levels) + " | RSS MB |"
    print(header)
    print("|---" * (len(levels) + 2) + "|")
    for name, data in results.items():
        cells = [f"{r['tokens_per_s']:.0f}, {r['ttft_p50']:.2f}/{r['ttft_p95']:.2f}" for r in
                 (data["rows"][c] for c in levels)]
        print(f"| {name} | " + " | ".join(cells) + f" | {data['rss_mb']:.0f} |")
    print("\n" + json.dumps({k: {"rss_mb": v["rss_mb"], **{str(c): r for c, r in v["rows"].items()}}
                              for k, v in results.items()}))


if __name__ == "__main__":
    main()
