"""Fixtures: the llama.cpp reference vectors and a models directory holding
the default model (ADYTON_TEST_MODEL); helpers live in ``llamacpp_helpers``.

Without llama-cpp-python (``make llamacpp`` installs it; ``make test`` does)
these tests are not collected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adyton.testing import require_model

try:
    import llama_cpp  # noqa: F401 - only whether it imports
except ImportError:
    collect_ignore_glob = ["test_*.py"]

REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / \
    "smollm2-135m-instruct-q4_1.llamacpp.json"


@pytest.fixture(scope="session")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"reference vectors not found: {REFERENCE}")
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    model = require_model()
    (d / model.name).symlink_to(model.resolve())
    return d


