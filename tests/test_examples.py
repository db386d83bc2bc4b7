"""The examples a newcomer runs first still run: the OpenAI SDK examples
(Python and JavaScript) against a real server with the default model, and the
Axiom curl example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adyton import create_app
from adyton.testing import ServerThread, link_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import adyton_guided
    import adyton_llama
    import adyton_openai

    models = link_model(tmp_path_factory.mktemp("models"))
    app = create_app(
        settings={"home": str(tmp_path_factory.mktemp("home")), "llama": {"models_dir": str(models)}},
        plugins=[adyton_llama, adyton_openai, adyton_guided], load_entrypoints=False,
    )
    with ServerThread(app) as running:
        yield running


def run(cmd, server, cwd=ROOT):
    env = {**os.environ, "ADYTON_URL": server.base_url, "ADYTON_API_KEY": "any"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def check_output(out: str) -> None:
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
    assert lines["chat"], out
    assert int(lines["stream usage"].split()[0]) > 0, out
    person = json.loads(lines["json"])
    assert set(person) == {"name", "age"} and isinstance(person["age"], int) and 0 <= person["age"] <= 120


def test_python_sdk_example(server):
    result = run([sys.executable, str(EXAMPLES / "openai_sdk.py")], server)
    assert result.returncode == 0, result.stderr
    check_output(result.stdout)


def test_javascript_sdk_example(server):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not installed")
    if not (EXAMPLES / "node_modules" / "openai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLES, check=True,
                       capture_output=True, timeout=300)
    result = run([node, "openai_sdk.mjs"], server, cwd=EXAMPLES)
    assert result.returncode == 0, result.stderr
    check_output(result.stdout)
