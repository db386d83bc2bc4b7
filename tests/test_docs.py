"""The documentation that is generated from code stays current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = "llama,llamacpp,openai,axiom,limits,guided,upstream,steer"


def test_configuration_reference_is_current(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "adyton.cli", "settings", "--markdown"],
        env={**os.environ, "ADYTON_LOAD_PLUGINS": FIRST_PARTY, "ADYTON_HOME": str(tmp_path)},
        capture_output=True, text=True, check=True,
    ).stdout
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert out == current, (
        "docs/configuration.md is out of date: regenerate it with\n"
        f"  ADYTON_LOAD_PLUGINS={FIRST_PARTY} adyton settings --markdown > docs/configuration.md"
    )
