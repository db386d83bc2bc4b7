"""Repository-wide pytest setup, loaded before any test directory's own.

* ``ADYTON_TEST_MODEL`` (the default model's GGUF, used by real-model tests)
  defaults to ``$ADYTON_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf``, where
  ``make test`` pulls it.
* ``ADYTON_REQUIRE_MODEL=1`` (set by ``make test``, so in CI) turns every skip
  caused by a missing model into a failure: the real-model tests must run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adyton.testing import model_path

os.environ.setdefault("ADYTON_TEST_MODEL", str(model_path()))


def pytest_sessionstart(session):
    if os.environ.get("ADYTON_REQUIRE_MODEL") and not Path(os.environ["ADYTON_TEST_MODEL"]).is_file():
        raise pytest.UsageError(
            f"ADYTON_REQUIRE_MODEL is set but the model {os.environ['ADYTON_TEST_MODEL']} is missing "
            "(run: adyton pull smollm2)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("ADYTON_REQUIRE_MODEL"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "ADYTON_TEST_MODEL" in reason or "model" in reason.lower() and "not found" in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"a real-model test was skipped although ADYTON_REQUIRE_MODEL is set: {reason}"
