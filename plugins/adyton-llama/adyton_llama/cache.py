"""The compat cache's file helpers: a source file's sha256 (memoized per
cache directory by device, inode, size and times, so a multi-GB model is hashed
once) and atomic writes.

This module does not import the kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def cached_sha256(path: str, cache_dir: Path) -> str:
    """sha256 of ``path``, memoized by (device, inode, size, mtime, ctime)."""
    st = os.stat(path)
    stamp = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo_path = cache_dir / "sha256-memo.json"
    memo: dict[str, Any] = {}
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        pass
    key = os.path.realpath(path)
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    memo[key] = {"stamp": stamp, "sha256": digest}
    try:
        atomic_write_bytes(memo_path, json.dumps(memo, indent=1).encode())
    except OSError as e:  # the memo is an optimization only
        log.debug("could not write %s: %s", memo_path, e)
    return digest


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        unlink_quiet(tmp)
        raise


def unlink_quiet(p: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)
