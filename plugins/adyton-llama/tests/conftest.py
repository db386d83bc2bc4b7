"""Fixtures: the default model (env ADYTON_TEST_MODEL), the llama.cpp reference
vectors (../shared/reference/ next to the repository), tiny random GGUF files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from adyton.testing import require_model

PLUGIN_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
for p in (PLUGIN_DIR, TESTS_DIR):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

REPO_ROOT = PLUGIN_DIR.parents[1]
DEFAULT_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "smollm2-135m-instruct-q4_1.llamacpp.json"


@pytest.fixture(scope="session")
def model_path() -> str:
    return str(require_model())  # skips, or fails under ADYTON_REQUIRE_MODEL


@pytest.fixture(scope="session")
def reference() -> dict:
    path = Path(os.environ.get("ADYTON_TEST_REFERENCE", DEFAULT_REFERENCE))
    if not path.is_file():
        pytest.skip(f"reference vectors not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compat_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-compat")


@pytest.fixture(scope="session")
def smol_tokenizer(model_path):
    from adyton_llama.tokenizer import GGUFTokenizer

    return GGUFTokenizer.from_gguf(model_path)


@pytest.fixture(scope="session")
def smol_meta(model_path):
    from adyton_llama.gguf import read_gguf

    return read_gguf(model_path)


@pytest.fixture(scope="session")
def smol_engine(model_path, compat_dir):
    from adyton_llama.engine import LlamaEngine

    engine = LlamaEngine(compat_dir=compat_dir, max_ctx=2048)
    engine.load(model_path)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_dir) -> Path:
    from tiny_gguf import make_tiny_gguf

    return make_tiny_gguf(tiny_dir / "tiny-gpt2.gguf", "gpt2", tied=True)


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir) -> Path:
    from tiny_gguf import make_tiny_gguf

    return make_tiny_gguf(tiny_dir / "tiny-llama.gguf", "llama", tied=True)
