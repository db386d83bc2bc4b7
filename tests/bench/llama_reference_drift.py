"""How far greedy decoding of the default model agrees with the llama.cpp
reference (../shared/reference/), for adyton-llama and for llama.cpp itself.

The reference's `greedy_ids` were made with llama-cpp-python 0.3.36 on some
machine. This script decodes the same 6 chats greedily with
  - adyton-llama's engine (ctransformers 0.2.27), cold, as the tests do, and
  - llama-cpp-python 0.3.36 built here (the peer venv of llama_decode.py:
    portable AVX2), prompt in one batch, then one token at a time,
and prints, for each chat, how many leading tokens agree with the reference
and the logit gap at the first disagreement (best logit minus the
reference token's logit, in that engine's own logits). A small gap is a
near-tie that another build's rounding can flip.

    .venv/bin/python tests/bench/llama_reference_drift.py

Not a pass/fail benchmark: it documents why the llama tests accept a
divergence at a near-tie in long answers (see plugins/adyton-llama/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "plugins" / "adyton-llama"))
from llama_decode import MODEL, ensure_peer  # noqa: E402 - after the sys.path line

REFERENCE = HERE.parents[2] / "shared" / "reference" / "smollm2-135m-instruct-q4_1.llamacpp.json"

#: runs in the peer venv: greedy ids and gaps from llama.cpp, one chat per line
PEER_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama, llama_cpp as C
model, ref = sys.argv[1], json.load(open(sys.argv[2]))
llm = Llama(model, n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
for chat in ref["chat_greedy"]:
    llm.reset()
    llm.eval(chat["prompt_ids"])
    agree, gap = None, None
    for i, want in enumerate(chat["greedy_ids"]):
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        best = int(np.argmax(logits))
        if best != want:
            agree, gap = i, float(logits[best] - logits[want])
            break
        llm.eval([want])
    print(json.dumps({"agree": agree if agree is not None else len(chat["greedy_ids"]), "gap": gap}))
"""


def adyton_rows(reference: dict) -> list[dict]:
    import numpy as np

    from adyton_llama.engine import LlamaEngine

    engine = LlamaEngine(max_ctx=2048)
    engine.load(MODEL)
    rows = []
    for chat in reference["chat_greedy"]:
        engine.reset()
        logits = engine.prefill(chat["prompt_ids"])
        agree, gap = len(chat["greedy_ids"]), None
        for i, want in enumerate(chat["greedy_ids"]):
            best = int(np.argmax(logits))
            if best != want:
                agree, gap = i, float(logits[best] - logits[want])
                break
            logits = engine.eval([want])
        rows.append({"agree": agree, "gap": gap})
    engine.close()
    return rows


def main() -> int:
    reference = json.loads(REFERENCE.read_text())
    peer = ensure_peer()
    out = subprocess.run([str(peer), "-c", PEER_SCRIPT, str(MODEL), str(REFERENCE)],
                         check=True, capture_output=True, text=True).stdout
    theirs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ours = adyton_rows(reference)

    def cell(row: dict, n: int) -> str:
        if row["gap"] is None:
            return f"all {n}"
        return f"{row['agree']:2d} (gap {row['gap']:.3f})"

    print(f"{'chat':4s} {'ref tokens':>10s}  {'adyton-llama':>20s}  {'llama.cpp 0.3.36 here':>22s}")
    for i, chat in enumerate(reference["chat_greedy"]):
        n = len(chat["greedy_ids"])
        kind = "short" if n < 32 else "long"
        print(f"{i:4d} {n:4d} {kind:5s}  {cell(ours[i], n):>20s}  {cell(theirs[i], n):>22s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
