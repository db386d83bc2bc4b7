"""Where the llama.cpp reference vectors of the default model are
(``ADYTON_TEST_REFERENCE``, else ``../shared/reference/`` next to the
repository; see that directory's README), for the ``reference`` fixture and
for tests parametrized over its entries at collection time."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "smollm2-135m-instruct-q4_1.llamacpp.json"


def reference_path() -> Path:
    return Path(os.environ.get("ADYTON_TEST_REFERENCE", DEFAULT_REFERENCE))


def load_reference() -> dict | None:
    """The reference vectors, or None when the file is absent."""
    path = reference_path()
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
