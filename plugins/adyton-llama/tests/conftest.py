"""Fixtures: the default model (env ADYTON_TEST_MODEL), the llama.cpp reference
vectors (../shared/reference/ next to the repository), tiny random GGUF files."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_reference import load_reference, reference_path

from adyton.testing import require_model


@pytest.fixture(scope="session")
def model_path() -> str:
    return str(require_model())  # skips, or fails under ADYTON_REQUIRE_MODEL


@pytest.fixture(scope="session")
def reference() -> dict:
    loaded = load_reference()
    if loaded is None:
        pytest.skip(f"reference vectors not found: {reference_path()}")
    return loaded


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
