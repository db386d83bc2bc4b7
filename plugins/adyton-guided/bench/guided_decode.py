"""Benchmark: guided decoding overhead and compile times.

    .venv/bin/python plugins/adyton-guided/bench/guided_decode.py [--runs 5] [--max-tokens 128] [--threads N]

1. Decode throughput: the same prompt and max_tokens, unconstrained vs
   JSON-schema-constrained with mask prefetch on and off, through the real
   kernel pipeline (tokens/s over the decode phase, median of --runs; the
   three modes interleaved run by run on one loaded model, so that a busy
   machine slows them alike). Target: ratio >= 0.9. Uses the real default
   model (ADYTON_TEST_MODEL) through adyton-llama when it is installed,
   offered through ``[llama] models_dir``; otherwise a synthetic engine with
   the real 49k vocabulary whose "forward pass" is an lm_head-sized matmul
   (reported as such). On 2 cores, anything else running makes ggml's two
   spinning engine threads collapse: benchmark on an idle machine.
2. Compile time p50/p99 over a set of schemas (cold: grammar + matcher
   against the 49k-token vocabulary), and the per-token mask+accept time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# the synthetic engine's matmul: one BLAS thread, like an engine that owns one
# core per forward pass (set before numpy loads OpenBLAS)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from adyton.settings import default_home

try:  # ADYTON_TEST_MODEL, else where `adyton pull smollm2` (make model) puts the default model
    from adyton_llama.pull import model_path as _pulled_model_path
except ImportError:
    pass
else:
    os.environ.setdefault("ADYTON_TEST_MODEL", str(
        _pulled_model_path(Path(os.environ.get("ADYTON_HOME") or default_home()) / "models")))

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from guided_helpers import gguf_vocabulary, model_path  # noqa: E402 - after the sys.path line

import adyton_guided  # noqa: E402 - after the sys.path line
from adyton import (  # noqa: E402 - after the sys.path line
    Backend,
    ChoiceFinished,
    Constraint,
    Credentials,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    PreparedPrompt,
    TextDelta,
    TokenPiece,
    create_app,
)
from adyton.testing import BackendPlugin  # noqa: E402 - after the sys.path line
from adyton_guided.compile import Compiler  # noqa: E402 - after the sys.path line
from adyton_guided.processor import GuidedProcessor  # noqa: E402 - after the sys.path line
from adyton_guided.tokenizer import TokenizerCache  # noqa: E402 - after the sys.path line

BENCH_SCHEMA = {
    "type": "object",
    "properties": {
        "people": {"type": "array", "minItems": 1, "maxItems": 10, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 40},
                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                           "city": {"type": "string", "maxLength": 40}},
            "required": ["name", "age", "city"], "additionalProperties": False}},
    },
    "required": ["people"], "additionalProperties": False,
}
PROMPT = ("List ten famous scientists as JSON: an object with a 'people' array of objects "
          "with name, age and city.")


def compile_schemas() -> list[dict]:
    base = [
        BENCH_SCHEMA,
        {"type": "object", "properties": {"topic": {"type": "string"}, "confidence": {"type": "number"}},
         "required": ["topic", "confidence"], "additionalProperties": False},
        {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                          "n": {"type": "integer", "minimum": 1, "maximum": 9}}},
        {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                          "email": {"type": "string", "format": "email"},
                                          "when": {"type": "string", "format": "date-time"}}},
        {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}},
        {"$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
         "$ref": "#/$defs/node"},
        {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
                                          "b": {"type": "object", "additionalProperties": {"type": "number"}}}},
        {"type": "object", "properties": {f"field_{i}": {"type": "string", "maxLength": 20} for i in range(30)},
         "required": [f"field_{i}" for i in range(30)]},
    ]
    return [{**s, "title": f"bench-{i}-{j}"} for j in range(10) for i, s in enumerate(base)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- engines -------------------------------------------------------------------------------


class SyntheticBackend(Backend):
    """The real vocabulary and a 'forward pass' the size of SmolLM2-135M's
    lm_head (576 x 49152 float32 matmul), so that the mask cost is measured
    against a realistic per-token budget. Not a language model."""

    name = "synthetic"

    def __init__(self, vocab) -> None:
        self.vocab = vocab
        rng = np.random.default_rng(0)
        self.head = rng.standard_normal((vocab.size, 576)).astype(np.float32) * 0.05
        self.state = rng.standard_normal(576).astype(np.float32)

    def list_models(self):
        return [ModelInfo(id="synthetic", context_length=4096)]

    def loaded_model(self):
        return "synthetic"

    def load_model(self, model_id):
        pass

    def prepare(self, request, model):
        text = request.prompt or ""
        return PreparedPrompt(model=model, token_ids=self.vocab.encode(text), text=text, context_length=4096)

    def vocabulary(self, model):
        return self.vocab

    def generate(self, prompt, step, max_tokens, cancelled):
        state = self.state.copy()
        for i in range(max_tokens):
            if cancelled.is_set():
                return
            logits = self.head @ state
            token = step(logits)
            state = np.roll(state, token % 7 + 1)
            if token in self.vocab.eos_token_ids:
                yield TokenPiece(token, "", FinishReason.STOP)
                return
            yield TokenPiece(token, self.vocab.token_text(token),
                             FinishReason.LENGTH if i + 1 == max_tokens else None)


def make_app(home: str, threads: int | None):
    """The real default model through adyton-llama (its ``[llama] models_dir``
    pointed at a directory holding a symlink to ADYTON_TEST_MODEL), else the
    synthetic engine."""
    try:
        import adyton_llama
    except ImportError:
        adyton_llama = None
    model = model_path()
    if adyton_llama is not None and model is not None and model.is_file():
        models = Path(home) / "models"
        models.mkdir(parents=True, exist_ok=True)
        (models / model.name).symlink_to(model.resolve())
        llama = {"models_dir": str(models)}
        if threads:
            llama["threads"] = threads
        app = create_app(settings={"home": home, "llama": llama},
                         plugins=[adyton_guided, adyton_llama], load_entrypoints=False)
        if app.extensions["adyton"].list_models():
            from adyton_llama.engine import default_threads

            return app, f"real model via adyton-llama, {threads or default_threads()} engine thread(s)"
    vocab = gguf_vocabulary()
    app = create_app(settings={"home": home},
                     plugins=[adyton_guided, BackendPlugin(SyntheticBackend(vocab))], load_entrypoints=False)
    return app, "SYNTHETIC engine (adyton-llama not available): lm_head-sized matmul per token"


async def decode_once(kernel, constrained: bool, max_tokens: int, seed: int) -> tuple[int, float]:
    chat = "llama" in kernel.backends
    request = GenerationRequest(
        messages=[{"role": "user", "content": PROMPT}] if chat else None,
        prompt=None if chat else PROMPT,
        max_tokens=max_tokens, temperature=0.7, seed=seed,
        constraints=[Constraint(kind="json_schema", value=BENCH_SCHEMA, source="bench")] if constrained else [],
    )
    generation = await kernel.pipeline.submit(request, Credentials(wire_format="bench"))
    first = None
    count = 0
    async for event in generation.events(keepalive_s=600):
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter()
        if isinstance(event, ChoiceFinished):
            count = event.completion_tokens
    end = time.perf_counter()
    # tokens after the first one, over the time after the first one: decode only
    return count, (count - 1) / max(end - first, 1e-9) if first and count > 1 else 0.0


MODES = ("unconstrained", "json-schema, prefetch on", "json-schema, prefetch off")


async def bench_decode(args) -> None:
    """The three modes interleaved run by run on one loaded model (on a
    shared machine, sequential blocks would compare different loads)."""
    with tempfile.TemporaryDirectory() as home:
        app, engine = make_app(home, args.threads)
        async with app.test_app():
            kernel = app.extensions["adyton"]
            guided = kernel.settings.guided
            await decode_once(kernel, False, 8, 0)  # warm: model load, prefix cache
            await decode_once(kernel, True, 8, 0)  # tokenizer build, compile
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            counts: dict[str, list[int]] = {m: [] for m in MODES}
            for run in range(args.runs):
                order = MODES[run % 3:] + MODES[:run % 3]
                for mode in order:
                    guided.prefetch_masks = mode.endswith("on")
                    n, rate = await decode_once(kernel, mode != "unconstrained", args.max_tokens, run)
                    rates[mode].append(rate)
                    counts[mode].append(n)
    free = statistics.median(rates["unconstrained"])
    print(f"decode [{engine}], max_tokens={args.max_tokens}, median of {args.runs} interleaved runs")
    for mode in MODES:
        r = statistics.median(rates[mode])
        runs = ", ".join(f"{x:.1f}" for x in rates[mode])
        line = f"  {mode:26s} {r:7.1f} tok/s  (runs: {runs}; tokens {counts[mode]})"
        if mode != "unconstrained":
            line += f"  ratio {r / free:.3f} {'OK' if r / free >= 0.9 else 'MISSED'} (target >= 0.9)"
        print(line)


def bench_compile() -> None:
    vocab = gguf_vocabulary()
    t0 = time.perf_counter()
    tok = TokenizerCache().get(vocab)
    print(f"tokenizer build ({vocab.size} tokens): {(time.perf_counter() - t0) * 1000:.0f} ms (once per vocabulary)")
    compiler = Compiler(max_entries=10_000)
    cold, warm = [], []
    for schema in compile_schemas():
        c = Constraint(kind="json_schema", value=schema)
        t0 = time.perf_counter()
        compiler.matcher(c, tok)
        cold.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        compiler.matcher(c, tok)
        warm.append((time.perf_counter() - t0) * 1000)
    print(f"compile, {len(cold)} schemas: cold p50 {pct(cold, 50):.2f} ms  p99 {pct(cold, 99):.2f} ms  "
          f"max {max(cold):.2f} ms;  cached p50 {pct(warm, 50) * 1000:.1f} us")
    # per-token mask + accept along a real tokenization
    doc = json.dumps({"people": [{"name": "Marie Curie", "age": 66, "city": "Paris"},
                                 {"name": "Alan Turing", "age": 41, "city": "Wilmslow"}] * 3})
    compiled = compiler.matcher(Constraint(kind="json_schema", value=BENCH_SCHEMA), tok)
    proc = GuidedProcessor(Constraint(kind="json_schema", value=BENCH_SCHEMA), compiled, tok,
                           max_tokens=None, verifiers=["syntax"], repair=False, repair_budget=0, prefetch=False)
    steps = []
    for _ in range(5):
        proc.reset()
        generated = []
        for token in vocab.encode(doc):
            logits = np.zeros(vocab.size, dtype=np.float32)
            t0 = time.perf_counter()
            proc.process(generated, logits)
            proc.accept(token)
            steps.append((time.perf_counter() - t0) * 1000)
            generated.append(token)
    print(f"mask+apply+accept per token ({len(steps)} steps): p50 {pct(steps, 50):.3f} ms  "
          f"p99 {pct(steps, 99):.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="[llama] threads (default: the backend's)")
    args = parser.parse_args()
    bench_compile()
    if not args.skip_decode:
        asyncio.run(bench_decode(args))


if __name__ == "__main__":
    main()
