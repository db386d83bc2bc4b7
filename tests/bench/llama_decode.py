"""Decoding with the real default model (SmolLM2-135M-Instruct Q4_1), greedy,
measured side by side in one run:

1. backend overhead: decode tokens/s of a Generation consumed event by event
   in-process (kernel pipeline + adyton-llama) vs a raw loop on
   adyton_llama.engine (eval one token, read the logits, argmax), same prompt.
   Target >= 0.95x.
2. vs llama-cpp-python's OpenAI server on the same GGUF, same prompt, same
   max_tokens, greedy, both over HTTP streaming (/v1/chat/completions) on
   127.0.0.1: adyton decode tokens/s >= 1.0x and time to first token <= 1.0x.
   The peer is installed into its own venv (~/.cache/adyton-bench/peer-venv;
   its wheel, compiled once for this CPU, is kept in ~/.cache/adyton-bench/wheels).
3. prefix reuse: second-turn time to first token <= 0.5x the same prompt cold.
4. RSS of an `adyton serve` process with the default model loaded, after a
   request: <= 400 MB.
5. streaming tokens/s a client sees through /v1/chat/completions >= 0.95x the
   backend's own decode rate for the same requests (the server's
   adyton_decode_tokens_per_second histogram).

    .venv/bin/python tests/bench/llama_decode.py [--rounds R] [--max-tokens N] [--threads T]
        [--skip-peer] [--only 12345]

Both engines use --threads CPU threads (default: all usable cores, adyton's
default). With 2 threads on 2 cores both engines' spin-waiting thread pools
collapse (to a few tokens/s) whenever anything else runs on the machine;
--threads 1 gives repeatable figures on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = Path(os.environ.get("ADYTON_BENCH_CACHE", Path.home() / ".cache" / "adyton-bench"))
PEER_VERSION = "0.3.36"
MODEL = Path(os.environ.get("ADYTON_TEST_MODEL") or
             Path(os.environ.get("ADYTON_HOME", Path.home() / ".local/share/adyton")) / "models"
             / "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_ID = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to paint."}]
SYSTEM = ("You are a patient assistant for a small public library. You help visitors find books, "
          "explain how to borrow and return them, tell them about opening hours (Monday to Friday "
          "from nine to seven, Saturday from ten to four, closed on Sunday), reading clubs for "
          "children and adults, the quiet study rooms on the second floor, printing and copying "
          "prices, the free wifi, and events such as author talks and the summer reading challenge. "
          "Always answer politely and briefly, in plain language, and suggest one related service "
          "the visitor might not know about. If a question is not about the library, say that you "
          "can only help with library matters, and offer to find a book on the subject instead. ") * 2


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# -- servers --------------------------------------------------------------------


class Proc:
    def __init__(self, name: str, argv: list[str], port: int, env: dict | None = None, log: Path | None = None):
        self.name, self.argv, self.port = name, argv, port
        self.env = {**os.environ, **(env or {})}
        self.log = log or CACHE / f"{name}.log"

    def __enter__(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._out, stderr=subprocess.STDOUT)
        wait_for_port(self.proc, self.port, 120, f"{self.name} (log: {self.log})")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def adyton_server(home: Path, models: Path, port: int, threads: int) -> Proc:
    env = {"ADYTON_HOME": str(home), "ADYTON_LLAMA__MODELS_DIR": str(models), "ADYTON_LLAMA__THREADS": str(threads),
           "ADYTON_LOAD_PLUGINS": "llama,openai", "ADYTON_LOG_LEVEL": "warning"}
    return Proc("adyton", [str(ROOT / ".venv" / "bin" / "adyton"), "serve", "--host", "127.0.0.1",
                           "--port", str(port)], port, env)


#: a portable AVX2 build (the ISA level of ctransformers' avx2 library): -march=native
#: enables AVX-512/AMX here, which this VM advertises but cannot run (SIGILL)
PEER_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                   "-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
                   "-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF "
                   "-DLLAMA_BUILD_EXAMPLES=OFF")


def ensure_peer() -> Path:
    """llama-cpp-python[server] in its own venv; the compiled wheel is cached."""
    venv = CACHE / "peer-venv"
    py = venv / "bin" / "python"
    marker = venv / "adyton-peer-build.txt"
    build_id = f"{PEER_VERSION} {PEER_CMAKE_ARGS}"
    check = [str(py), "-c",
             f"import llama_cpp, llama_cpp.server, uvicorn; assert llama_cpp.__version__ == '{PEER_VERSION}'"]
    if (py.exists() and marker.is_file() and marker.read_text() == build_id
            and subprocess.run(check, capture_output=True).returncode == 0):
        return py
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp = wheels / "build.txt"
    wheel = list(wheels.glob(f"llama_cpp_python-{PEER_VERSION}-*.whl"))
    if not wheel or not stamp.is_file() or stamp.read_text() != build_id:
        for old in wheel:
            old.unlink()
        print(f"building llama-cpp-python {PEER_VERSION} (AVX2, 15+ minutes on 2 cores) ...", flush=True)
        env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2), "CMAKE_ARGS": PEER_CMAKE_ARGS}
        subprocess.run([str(py), "-m", "pip", "wheel", "-q", "--no-cache-dir", "--no-deps",
                        f"llama-cpp-python=={PEER_VERSION}", "-w", str(wheels)], check=True, env=env)
        stamp.write_text(build_id)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-cache-dir", "--force-reinstall",
                    "--find-links", str(wheels), f"llama-cpp-python[server]=={PEER_VERSION}"], check=True)
    marker.write_text(build_id)
    return py


def peer_server(py: Path, model: Path, port: int, threads: int) -> Proc:
    return Proc("llama-cpp-python", [str(py), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                     "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
                                     "--n_threads_batch", str(threads), "--verbose", "False"], port)


# -- an SSE client with exact timestamps ------------------------------------------


def stream_chat(port: int, body: dict) -> dict:
    """POST a streaming chat completion; time to first content, decode rate."""

    async def run() -> dict:
        payload = json.dumps({**body, "stream": True}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        stamps: list[float] = []
        text: list[str] = []
        usage = None
        buf = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.perf_counter()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # chunked-encoding sizes, comments, blank lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                event = json.loads(data)
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        stamps.append(now)
                        text.append(content)
        writer.close()
        assert stamps, f"no content streamed from port {port}"
        n = (usage or {}).get("completion_tokens") or len(stamps)
        return {"ttft": stamps[0] - t0, "decode_tps": (n - 1) / (stamps[-1] - stamps[0]),
                "tokens": n, "chunks": len(stamps), "text": "".join(text), "usage": usage}

    return asyncio.run(run())


def post_json(port: int, path: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def request_body(messages, max_tokens: int, peer: bool) -> dict:
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if peer:  # llama-cpp-python defaults to repeat_penalty 1.1; greedy means none
        body.update({"repeat_penalty": 1.0, "top_k": 1, "stream_options": {"include_usage": True}})
    else:
        body["stream_options"] = {"include_usage": True}
    return body


def metrics_decode(port: int) -> tuple[float, float]:
    """(sum, count) of the server's adyton_decode_tokens_per_second histogram."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    s = float(re.search(r"^adyton_decode_tokens_per_second_sum ([\d.e+-]+)$", text, re.M).group(1))
    c = float(re.search(r"^adyton_decode_tokens_per_second_count ([\d.e+-]+)$", text, re.M).group(1))
    return s, c


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- 1. backend overhead, in-process ---------------------------------------------------


def bench_backend_overhead(home: Path, models: Path, rounds: int, max_tokens: int, threads: int) -> dict:
    import numpy as np

    import adyton_llama
    from adyton import Credentials, GenerationRequest, create_app
    from adyton.types import TextDelta
    from adyton_llama.engine import LlamaEngine

    app = create_app(settings={"home": str(home), "log_level": "warning",
                               "llama": {"models_dir": str(models), "threads": threads}},
                     plugins=[adyton_llama], load_entrypoints=False)
    kernel = app.extensions["adyton"]
    backend = kernel.backends["llama"]
    raw_rates: list[float] = []
    kernel_rates: list[float] = []

    async def main() -> None:
        async with app.test_app():
            while kernel.models.loading:
                await asyncio.sleep(0.05)
            model = {m.id: m for m in backend.list_models()}[MODEL_ID]
            prompt_ids = backend.prepare(GenerationRequest(messages=STORY), model).token_ids
            engine = LlamaEngine(max_ctx=backend.settings.max_context, threads=backend.settings.threads,
                                 compat_dir=backend.compat_dir)
            engine.load(model.path)

            def raw() -> float:
                engine.reset()
                logits = engine.prefill(prompt_ids)
                tok = int(np.argmax(logits))
                t_first = time.perf_counter()  # the first token is known here
                for _ in range(max_tokens - 1):
                    logits = engine.eval([tok])
                    tok = int(np.argmax(logits))
                return (max_tokens - 1) / (time.perf_counter() - t_first)

            async def through_kernel() -> float:
                backend._engine.reset()  # cold, like the raw loop
                request = GenerationRequest(messages=STORY, max_tokens=max_tokens, temperature=0, stream=True,
                                            model=MODEL_ID)
                generation = await kernel.pipeline.submit(request, Credentials())
                stamps = []
                async for event in generation:
                    if isinstance(event, TextDelta) and event.text:
                        stamps.append(time.perf_counter())
                n = generation.usage.completion_tokens
                assert n == max_tokens, f"the model stopped after {n} tokens; use another prompt"
                return (n - 1) / (stamps[-1] - stamps[0])

            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, raw)  # warm-up of both
            await through_kernel()
            for _ in range(rounds):
                raw_rates.append(await loop.run_in_executor(None, raw))
                kernel_rates.append(await through_kernel())
                print(f"  raw engine {raw_rates[-1]:6.1f} tok/s   kernel stream {kernel_rates[-1]:6.1f} tok/s",
                      flush=True)
            engine.close()

    asyncio.run(main())
    return {"raw": median(raw_rates), "kernel": median(kernel_rates)}


def bench_client_rate(port: int, body: dict, rounds: int, results: list) -> None:
    """5. the decode rate a streaming client sees vs the server's own."""
    print("5. client-seen streaming rate vs the backend's own decode rate", flush=True)
    client, server_side = [], []
    for _ in range(rounds):
        s0, c0 = metrics_decode(port)
        r = stream_chat(port, body)
        s1, c1 = metrics_decode(port)
        assert c1 - c0 == 1
        client.append(r["decode_tps"])
        server_side.append(s1 - s0)
        print(f"  client {client[-1]:6.1f} tok/s   server {server_side[-1]:6.1f} tok/s   ({r['tokens']} tokens)",
              flush=True)
    ratio5 = median([c / s for c, s in zip(client, server_side, strict=True)])
    results.append(("5 client SSE / backend decode tok/s", ratio5, ">= 0.95", ratio5 >= 0.95))


def bench_prefix_reuse(port: int, rounds: int, results: list) -> None:
    """3. a second chat turn vs the same prompt cold."""
    print("3. prefix reuse: second turn vs the same prompt cold", flush=True)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When are you open on Saturday?"}]
    other = [{"role": "system", "content": "Reply in French. " + SYSTEM}, chat[1]]
    warm_ttft, cold_ttft = [], []
    for i in range(rounds):
        first = stream_chat(port, request_body(chat, 24, peer=False))
        turn2 = chat + [{"role": "assistant", "content": first["text"]},
                        {"role": "user", "content": f"Can I print {i + 3} pages there?"}]
        warm = stream_chat(port, request_body(turn2, 8, peer=False))
        stream_chat(port, request_body(other, 2, peer=False))  # overwrite the cache
        cold = stream_chat(port, request_body(turn2, 8, peer=False))
        assert warm["text"] == cold["text"], (warm["text"], cold["text"])
        warm_ttft.append(warm["ttft"])
        cold_ttft.append(cold["ttft"])
        print(f"  prompt {warm['usage']['prompt_tokens']} tokens: warm TTFT {1000 * warm['ttft']:6.1f} ms, "
              f"cold TTFT {1000 * cold['ttft']:6.1f} ms", flush=True)
    ratio3 = median(warm_ttft) / median(cold_ttft)
    results.append(("3 second-turn TTFT / cold TTFT", ratio3, "<= 0.5", ratio3 <= 0.5))


# -- main ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip-peer", action="store_true", help="leave out benchmark 2")
    parser.add_argument("--only", default="12345", help="which benchmarks to run, e.g. --only 2")
    args = parser.parse_args()
    parts = set(args.only) - ({"2"} if args.skip_peer else set())
    if not MODEL.is_file():
        raise SystemExit(f"no model at {MODEL} (run: adyton pull smollm2)")
    threads = args.threads
    home = CACHE / "home"  # keeps the compat copy of the GGUF between runs
    models = CACHE / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / MODEL.name
    if not link.exists():
        link.symlink_to(MODEL)
    results: list[tuple[str, float, str, bool]] = []
    print(f"model {MODEL} ({MODEL.stat().st_size / 1e6:.0f} MB), {threads} engine threads, "
          f"{len(os.sched_getaffinity(0))} cores, "
          f"max_tokens {args.max_tokens}, {args.rounds} rounds", flush=True)

    if "1" in parts:
        print("1. backend overhead (in-process)", flush=True)
        r1 = bench_backend_overhead(home, models, args.rounds, args.max_tokens, threads)
        ratio = r1["kernel"] / r1["raw"]
        print(f"   median raw {r1['raw']:.1f} tok/s, kernel {r1['kernel']:.1f} tok/s")
        results.append(("1 kernel stream / raw engine decode tok/s", ratio, ">= 0.95", ratio >= 0.95))

    peer_py = ensure_peer() if "2" in parts else None
    port = free_port()
    with adyton_server(home, models, port, threads) as ady:
        deadline = time.monotonic() + 60
        import urllib.error
        import urllib.request
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
                break
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        body = request_body(STORY, args.max_tokens, peer=False)
        stream_chat(port, body)  # warm-up

        if "4" in parts:
            rss = vm_rss_mb(ady.proc.pid)
            print(f"4. adyton serve RSS after a request: {rss:.0f} MB")
            results.append(("4 adyton serve VmRSS MB", rss, "<= 400", rss <= 400))
        if "5" in parts:
            bench_client_rate(port, body, args.rounds, results)
        if "3" in parts:
            bench_prefix_reuse(port, args.rounds, results)
        # 2
        if peer_py is not None:
            print("2. adyton vs llama-cpp-python server, HTTP streaming", flush=True)
            peer_port = free_port()
            with peer_server(peer_py, MODEL, peer_port, threads):
                peer_body = request_body(STORY, args.max_tokens, peer=True)
                stream_chat(peer_port, peer_body)  # warm-up
                ours, theirs = [], []
                for _ in range(args.rounds):
                    for name, p, b, out in (("adyton", port, body, ours),
                                            ("llama-cpp-python", peer_port, peer_body, theirs)):
                        # a plain-text completion first: it shares no token with the chat
                        # prompt, so neither side starts from a cached prefix
                        post_json(p, "/v1/completions", {"model": MODEL_ID, "prompt": "Say hi.", "max_tokens": 2})
                        r = stream_chat(p, b)
                        out.append(r)
                        print(f"  {name:17s} TTFT {1000 * r['ttft']:6.1f} ms   decode {r['decode_tps']:6.1f} tok/s   "
                              f"({r['tokens']} tokens)", flush=True)
                same = ours[-1]["text"] == theirs[-1]["text"]
                print(f"   same text from both: {same}")
                tps = median([r["decode_tps"] for r in ours]) / median([r["decode_tps"] for r in theirs])
                ttft = median([r["ttft"] for r in ours]) / median([r["ttft"] for r in theirs])
                results.append(("2a adyton / llama-cpp-python decode tok/s", tps, ">= 1.0", tps >= 1.0))
                results.append(("2b adyton / llama-cpp-python TTFT", ttft, "<= 1.0", ttft <= 1.0))

    print()
    for name, value, target, ok in sorted(results):
        print(f"{name:45s} {value:8.2f}  (target {target})  {verdict(ok)}")
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
