"""Proxy overhead of adyton-upstream: time to first token and decode
tokens/s through the proxy ÷ straight to the upstream, in the same run.

    .venv/bin/python plugins/adyton-upstream/bench/proxy_overhead.py            # 20 rounds
    .venv/bin/python plugins/adyton-upstream/bench/proxy_overhead.py --rounds 5 --max-tokens 32

Two `adyton serve` processes on loopback: the upstream (adyton-llama +
adyton-openai, the default model, ADYTON_TEST_MODEL or
$ADYTON_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf) and the proxy
(adyton-openai + adyton-upstream, one replica: the upstream). Each round
sends the same greedy streaming chat request straight to the upstream and
through the proxy, in alternating order, after one warm-up of each. A
client-side clock measures TTFT (request sent → first content chunk) and
decode tokens/s ((completion tokens − 1) ÷ (last chunk − first chunk)); the
figures compared are the medians over the rounds of each round's pair
(proxy − direct for TTFT, proxy ÷ direct for decode).

Targets (issue 16): TTFT added ≤ 5 ms at the median, decode ≥ 0.97×.
Exit status 0 when both hold, 1 when not (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent
MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to paint."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_file() -> Path:
    sys.path.insert(0, str(ROOT / "core"))
    from adyton.settings import default_home
    from adyton.testing import model_path
    from adyton_llama.pull import model_path as pulled_model_path

    # ADYTON_TEST_MODEL, else where `adyton pull smollm2` (make model) puts the default model
    path = model_path() or pulled_model_path(Path(os.environ.get("ADYTON_HOME") or default_home()) / "models")
    if not path.is_file():
        raise SystemExit(f"model {path} not found (run: make model, or set ADYTON_TEST_MODEL)")
    return path


def start(name: str, plugins: str, config: str, workdir: Path, port: int) -> subprocess.Popen:
    toml = workdir / f"{name}.toml"
    toml.write_text(config)
    env = {**os.environ, "ADYTON_LOAD_PLUGINS": plugins, "ADYTON_CONFIG": str(toml),
           "ADYTON_HOME": str(workdir / name)}
    log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - the server's output for its whole life
    proc = subprocess.Popen([str(VENV_BIN / "adyton"), "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited; see {workdir / (name + '.log')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} server did not come up in 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def one(client: httpx.Client, url: str, model: str, max_tokens: int) -> tuple[float, float, int, str]:
    """(ttft s, decode tok/s, completion tokens, text) of one streaming request."""
    body = {"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = 0.0
    text, tokens = [], 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                content = choice["delta"].get("content")
                if content:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(content)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return first - t0, decode, tokens, "".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--upstream-threads", type=int, default=None,
                        help="the upstream engine's [llama] threads (default: its own choice, all usable "
                             "cores); 1 on a 2-core machine leaves a core to the proxy, as a real "
                             "deployment, whose engine runs elsewhere, does")
    args = parser.parse_args()
    model = model_file()
    with tempfile.TemporaryDirectory(prefix="adyton-upstream-bench-") as tmp:
        work = Path(tmp)
        models = work / "models"
        models.mkdir()
        (models / model.name).symlink_to(model.resolve())
        up_port, proxy_port = free_port(), free_port()
        threads = f"threads = {args.upstream_threads}\n" if args.upstream_threads else ""
        upstream = start("upstream", "llama,openai", f'[llama]\nmodels_dir = "{models}"\n{threads}', work, up_port)
        proxy = None
        try:
            up_url = f"http://127.0.0.1:{up_port}"
            model_id = httpx.get(up_url + "/v1/models").json()["data"][0]["id"]
            proxy = start("proxy", "openai,upstream",
                          f'[upstream.models.proxied]\nreplicas = ["{up_url}"]\nupstream_model = "{model_id}"\n',
                          work, proxy_port)
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            direct, through = [], []
            with httpx.Client(timeout=300) as client:
                d = one(client, up_url, model_id, args.max_tokens)  # warm-up (loads the model)
                p = one(client, proxy_url, "proxied", args.max_tokens)
                if d[3] != p[3]:
                    print(f"warning: the texts differ:\n  direct: {d[3]!r}\n  proxy:  {p[3]!r}")
                for i in range(args.rounds):
                    order = [(direct, up_url, model_id), (through, proxy_url, "proxied")]
                    for bucket, url, name in (order if i % 2 == 0 else order[::-1]):
                        bucket.append(one(client, url, name, args.max_tokens))
        finally:
            for proc in (proxy, upstream):
                if proc is not None:
                    stop(proc)
    ttft_d = statistics.median(x[0] for x in direct)
    ttft_p = statistics.median(x[0] for x in through)
    dec_d = statistics.median(x[1] for x in direct)
    dec_p = statistics.median(x[1] for x in through)
    # paired by round (the two requests of a round ran back to back): steadier
    # than the difference of the medians on a machine whose speed drifts
    added_ms = statistics.median(p[0] - d[0] for d, p in zip(direct, through, strict=True)) * 1000
    ratio = statistics.median(p[1] / d[1] for d, p in zip(direct, through, strict=True))
    print(f"rounds {args.rounds}, max_tokens {args.max_tokens}, completion tokens {direct[0][2]}")
    print(f"TTFT p50   direct {ttft_d * 1000:8.1f} ms   proxy {ttft_p * 1000:8.1f} ms   "
          f"added (median of pairs) {added_ms:+.1f} ms (target <= 5)")
    print(f"decode p50 direct {dec_d:8.1f} tok/s proxy {dec_p:8.1f} tok/s "
          f"ratio (median of pairs) {ratio:.3f} (target >= 0.97)")
    ok = added_ms <= 5 and ratio >= 0.97
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
