"""examples/hello-plugin, installed as a real distribution (pip --target),
is discovered through its entry point, listed by `adyton plugins`, works in
a served app, and is switched off with ADYTON_LOAD_PLUGINS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("hello-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT / "examples" / "hello-plugin")],
        check=True, capture_output=True, text=True,
    )
    return target


def adyton(installed, tmp_path, *args, **env):
    full_env = {**os.environ, "PYTHONPATH": str(installed), "ADYTON_HOME": str(tmp_path), **env}
    full_env.pop("ADYTON_LOAD_PLUGINS", None) if "ADYTON_LOAD_PLUGINS" not in env else None
    return subprocess.run([sys.executable, "-m", "adyton.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_discovered_and_listed(installed, tmp_path):
    out = adyton(installed, tmp_path, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    [hello] = [p for p in json.loads(out.stdout) if p["name"] == "hello"]
    assert hello["distribution"] == "adyton-hello" and hello["version"] == "0.1.0"
    assert hello["hooks"] == ["logits_processors", "register_settings"]
    text = adyton(installed, tmp_path, "plugins").stdout
    assert "hello  adyton-hello 0.1.0" in text


def test_switched_off_with_load_plugins(installed, tmp_path):
    out = adyton(installed, tmp_path, "plugins", "--json", ADYTON_LOAD_PLUGINS="")
    assert [p["name"] for p in json.loads(out.stdout)] == ["sampler", "kernel_routes"]


def test_its_settings_are_validated_by_the_kernel(installed, tmp_path):
    out = adyton(installed, tmp_path, "plugins", ADYTON_LOAD_PLUGINS="hello",
                 ADYTON_HELLO__BANNED_WORDS="not-a-list")
    assert out.returncode == 2 and "hello.banned_words" in out.stderr
