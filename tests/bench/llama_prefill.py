"""Where the time to first token goes, for the 42-token chat prompt of
llama_decode.py's peer comparison (greedy, cold):

1. raw prefill of those tokens by adyton-llama's engine (ctransformers) and
   by llama.cpp 0.3.36 (llama-cpp-python in the peer venv of llama_decode.py,
   ``Llama.eval``), with 1 and with all threads, alternating round by round;
2. in-process, the pipeline's first token (``Pipeline.submit`` to the first
   ``TextDelta``) against a raw ``LlamaEngine.prefill`` of the same prompt,
   alternating, medians: what the kernel adds on top of the engine.

    .venv/bin/python tests/bench/llama_prefill.py [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_decode import CACHE, MODEL, MODEL_ID, STORY, ensure_peer  # noqa: E402 - after the sys.path line

#: runs in the peer venv: one engine per thread count; for each line "THREADS"
#: on stdin, prints the time (ms) of one cold prefill of the prompt
PEER_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
model, ids = sys.argv[1], json.loads(sys.argv[2])
engines = {t: Llama(model, n_ctx=2048, n_threads=t, n_threads_batch=t, n_batch=512, verbose=False)
           for t in json.loads(sys.argv[3])}
print("ready", flush=True)
for line in sys.stdin:
    llm = engines[int(line)]
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    print(1000 * (time.perf_counter() - t0), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import adyton_llama
    from adyton import Credentials, GenerationRequest, create_app
    from adyton.types import TextDelta
    from adyton_llama.engine import LlamaEngine, default_threads

    cores = default_threads()
    models = CACHE / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / MODEL.name).exists():
        (models / MODEL.name).symlink_to(MODEL)
    app = create_app(settings={"home": str(CACHE / "home"), "log_level": "warning",
                               "llama": {"models_dir": str(models), "threads": cores}},
                     plugins=[adyton_llama], load_entrypoints=False)
    kernel = app.extensions["adyton"]
    backend = kernel.backends["llama"]
    model = {m.id: m for m in backend.list_models()}[MODEL_ID]
    ids = backend.prepare(GenerationRequest(messages=STORY), model).token_ids
    thread_counts = sorted({1, cores})
    print(f"prompt {len(ids)} tokens, {cores} cores, {args.rounds} rounds", flush=True)

    # 1. raw prefill, both engines, alternating (this VM's speed drifts)
    engines = {}
    for threads in thread_counts:
        engines[threads] = LlamaEngine(threads=threads, max_ctx=2048, compat_dir=backend.compat_dir)
        engines[threads].load(model.path)
    peer = subprocess.Popen([str(ensure_peer()), "-c", PEER_SCRIPT, str(MODEL), json.dumps(ids),
                             json.dumps(thread_counts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert peer.stdout.readline().strip() == "ready"
    ours: dict[int, list[float]] = {t: [] for t in thread_counts}
    theirs: dict[int, list[float]] = {t: [] for t in thread_counts}
    try:
        for _ in range(args.rounds):
            for threads, engine in engines.items():
                engine.reset()
                t0 = time.perf_counter()
                engine.prefill(ids)
                ours[threads].append(1000 * (time.perf_counter() - t0))
                peer.stdin.write(f"{threads}\n")
                peer.stdin.flush()
                theirs[threads].append(float(peer.stdout.readline()))
    finally:
        peer.stdin.close()
        peer.wait()
        for engine in engines.values():
            engine.close()
    print("1. raw prefill, alternating, medians:")
    for threads in thread_counts:
        ratio = statistics.median(a / b for a, b in zip(ours[threads], theirs[threads], strict=True))
        print(f"   {threads} thread(s): adyton-llama {statistics.median(ours[threads]):6.1f} ms   "
              f"llama.cpp {statistics.median(theirs[threads]):6.1f} ms   median ratio {ratio:.2f}")

    # 2. what the kernel adds to the engine's prefill
    async def kernel_vs_engine() -> tuple[list[float], list[float]]:
        raw, first = [], []
        async with app.test_app():
            while kernel.models.loading:
                await asyncio.sleep(0.05)
            engine = backend._engine
            for _ in range(args.rounds):
                engine.reset()
                t0 = time.perf_counter()
                await asyncio.to_thread(engine.prefill, ids)
                raw.append(time.perf_counter() - t0)
                engine.reset()
                t0 = time.perf_counter()
                generation = await kernel.pipeline.submit(
                    GenerationRequest(messages=STORY, max_tokens=2, temperature=0, model=MODEL_ID), Credentials())
                async for event in generation:
                    if isinstance(event, TextDelta):
                        first.append(time.perf_counter() - t0)
                        break
                await generation.aclose()
        return raw, first

    raw, first = asyncio.run(kernel_vs_engine())
    r, f = 1000 * statistics.median(raw), 1000 * statistics.median(first)
    print(f"2. in-process, {cores} thread(s), medians: raw prefill {r:.1f} ms, pipeline first token {f:.1f} ms"
          f" (+{f - r:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
