"""The real model for real-model tests, and what a test does when something
it needs is missing.

The model is the GGUF file ``$ADYTON_TEST_MODEL`` names; which file that is
is the test runner's business (``make test`` sets it to adyton-llama's default
model), not the kernel's. A test that needs it carries the ``requires_model``
marker (see ``pytest_plugin``) or calls ``require_model()`` / ``link_model()``:
a missing model skips the test, or fails it when ``ADYTON_REQUIRE_MODEL`` is
set (``make test``, CI: there everything must run). ``unavailable(reason)``
does the same for any other missing prerequisite (a server binary, a
browser).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

#: the environment variable naming the real model's GGUF file
MODEL_ENV = "ADYTON_TEST_MODEL"
#: set (to anything non-empty) where every test must run: a missing
#: prerequisite fails the test instead of skipping it
REQUIRE_ENV = "ADYTON_REQUIRE_MODEL"


def required() -> bool:
    """True where tests must not skip for a missing prerequisite (``ADYTON_REQUIRE_MODEL``)."""
    return bool(os.environ.get(REQUIRE_ENV))


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test because something it needs is missing (``reason``
    says what, and how to get it) -- or fail it when ``ADYTON_REQUIRE_MODEL``
    is set."""
    import pytest

    if required():
        pytest.fail(f"{REQUIRE_ENV} is set, so this test must run, but {reason}", pytrace=False)
    pytest.skip(reason)


def model_path() -> Path | None:
    """The model file real-model tests use: ``$ADYTON_TEST_MODEL``, or None
    when it is not set. Whether the file exists is not checked (see
    ``require_model``)."""
    configured = os.environ.get(MODEL_ENV)
    return Path(configured) if configured else None


def require_model(path: Path | None = None, how: str = f"set {MODEL_ENV} to a GGUF file") -> Path:
    """``path`` (default: ``model_path()``) if that file exists; else
    ``unavailable``: the calling test is skipped, or failed when
    ``ADYTON_REQUIRE_MODEL`` is set. ``how`` tells how to get the file."""
    path = path or model_path()
    if path is None:
        unavailable(f"{MODEL_ENV} is not set ({how})")
    if not path.is_file():
        unavailable(f"model file {path} not found ({how})")
    return path


def link_model(models_dir: str | os.PathLike[str]) -> Path:
    """Make ``models_dir`` (created if needed) hold a symlink to the real
    model (``require_model()``: skips or fails the test when it is missing)
    and return it, e.g. for adyton-llama, which serves the ``*.gguf`` files of
    its models directory::

        models = link_model(tmp_path / "models")
        app = create_app(settings={"home": ..., "llama": {"models_dir": str(models)}},
                         plugins=[adyton_llama, ...], load_entrypoints=False)
    """
    model = require_model()
    models = Path(models_dir)
    models.mkdir(parents=True, exist_ok=True)
    link = models / model.name
    if not link.exists():
        link.symlink_to(model.resolve())
    return models
