"""This repository's tests use adyton-llama's default model: unless
``ADYTON_TEST_MODEL`` names another file, it points at where ``adyton pull
smollm2`` (``make model``) puts it, ``$ADYTON_HOME/models/``. (``make test``
sets it, and ``ADYTON_REQUIRE_MODEL=1``: see ``adyton.testing.pytest_plugin``
for what a real-model test does when the file is missing.)"""

from __future__ import annotations

import os
from pathlib import Path

from adyton.settings import default_home

try:
    from adyton_llama.pull import model_path as pulled_model_path
except ImportError:  # adyton-llama is not installed: only ADYTON_TEST_MODEL names a model
    pass
else:
    os.environ.setdefault(
        "ADYTON_TEST_MODEL",
        str(pulled_model_path(Path(os.environ.get("ADYTON_HOME") or default_home()) / "models")))
