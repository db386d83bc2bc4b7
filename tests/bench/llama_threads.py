"""The llama engine's thread count on a machine that is not idle.

ggml's threads spin while they wait for each other: with as many threads as
cores, one other busy process makes decoding collapse. adyton-llama's default
(``llama.threads`` unset) tunes the thread count per call from measured speed
(``adyton_llama.engine.ThreadTuner``). This measures raw decode tokens/s
(greedy, 256 tokens, engines in one process, alternating rounds) of:

  fixed-all   threads = all usable cores (the setting before the tuner)
  tuned       the default: up to all cores, tuned
  fixed-half  threads = cores // 2

first on the idle machine, then while ``--busy`` other processes spin on the
CPU. Targets: tuned >= 0.95x fixed-all when idle; tuned >= 1.5x fixed-all
when busy.

    .venv/bin/python tests/bench/llama_threads.py [--rounds R] [--busy N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "plugins" / "adyton-llama"))
from llama_decode import MODEL  # noqa: E402 - after the sys.path line

PROMPT = "<|im_start|>user\nWrite a long story about a dragon who learns to paint.<|im_end|>\n<|im_start|>assistant\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="busy processes in the second phase")
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    from adyton_llama.engine import LlamaEngine, default_threads, greedy
    from adyton_llama.tokenizer import GGUFTokenizer

    cores = default_threads()
    if cores < 2:
        raise SystemExit("needs at least 2 cores")
    prompt = GGUFTokenizer.from_gguf(MODEL).encode(PROMPT)
    engines = {"fixed-all": LlamaEngine(threads=cores), "tuned": LlamaEngine(),
               "fixed-half": LlamaEngine(threads=max(1, cores // 2))}
    for engine in engines.values():
        engine.load(MODEL)

    def rate(engine: LlamaEngine) -> float:
        engine.reset()
        first, n = 0.0, 0
        for _ in engine.generate(prompt, greedy, args.tokens, stop_ids=()):
            n += 1
            if n == 1:
                first = time.perf_counter()
        return (n - 1) / (time.perf_counter() - first)

    print(f"model {MODEL.name}, {cores} cores, {args.tokens} tokens, {args.rounds} rounds", flush=True)
    results = []
    for phase in ("idle", "busy"):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy if phase == "busy" else 0)]
        try:
            rates: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(args.rounds):
                for name, engine in engines.items():
                    rates[name].append(rate(engine))
                print(f"  {phase}: " + "   ".join(f"{n} {r[-1]:6.1f}" for n, r in rates.items()) + "  tok/s",
                      flush=True)
        finally:
            for hog in hogs:
                hog.kill()
        ratio = statistics.median(t / f for t, f in zip(rates["tuned"], rates["fixed-all"], strict=True))
        target = 0.95 if phase == "idle" else 1.5
        med = {n: statistics.median(r) for n, r in rates.items()}
        print(f"  {phase} medians: " + ", ".join(f"{n} {v:.1f}" for n, v in med.items()))
        results.append((f"{phase}: tuned / fixed-all (median of rounds)", ratio, target))
    print()
    ok = True
    for name, ratio, target in results:
        passed = ratio >= target
        ok &= passed
        print(f"{name:45s} {ratio:6.2f}  (target >= {target})  {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
