"""Steering vectors in the kernel's database (issue 16), without a model:
servers sharing one database see each other's writes at once, and the
files of earlier releases are imported once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adyton import Database, NotFound, Principal
from adyton_steer.store import VectorStore, write_control_vector

ALICE = Principal(id="acct-a")
BOB = Principal(id="acct-b")
VECTORS = {5: np.linspace(-1, 1, 8, dtype=np.float32), 6: np.ones(8, np.float32)}


def make(store: VectorStore, owner=ALICE):
    return store.create(owner, "m", VECTORS, model_hint="llama", name="v", method="upload", details={"k": 1})


def test_two_servers_on_one_database_see_writes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path}/adyton.sqlite3"
    a, b = VectorStore(Database(url)), VectorStore(Database(url))
    vector = make(a)
    seen = b.get(vector.id, ALICE)  # b decodes it from the stored GGUF
    assert np.array_equal(seen.vectors[5], VECTORS[5]) and seen.details == {"k": 1}
    with pytest.raises(NotFound):
        b.get(vector.id, BOB)
    a.set_shared(vector.id, True)
    assert b.get(vector.id, BOB).shared  # b had it cached: the sharing is still seen
    assert [v.id for v in b.list_vectors(BOB)] == [vector.id]
    a.delete(vector.id, ALICE)
    with pytest.raises(NotFound):
        b.get(vector.id, ALICE)
    assert b.list_vectors(ALICE) == []
    for store in (a, b):
        store.db.dispose()


def test_gguf_bytes_are_kept_as_written(tmp_path):
    store = VectorStore(Database(f"sqlite:///{tmp_path}/adyton.sqlite3"))
    vector = make(store)
    path = tmp_path / "same.gguf"
    write_control_vector(path, VECTORS, "llama")
    assert store.gguf_bytes(vector) == path.read_bytes()
    store.db.dispose()


def test_files_of_earlier_releases_are_imported_once(tmp_path):
    root = tmp_path / "steer"
    old = root / "vectors"
    old.mkdir(parents=True)
    write_control_vector(old / "sv_0123456789abcdef01234567.gguf", VECTORS, "llama")
    (old / "sv_0123456789abcdef01234567.json").write_text(json.dumps(
        {"id": "sv_0123456789abcdef01234567", "owner": "acct-a", "model": "m", "name": "old",
         "method": "contrastive", "shared": False, "created": 1700000000, "details": {"pooling": "mean"}}))
    (old / "sv_broken.json").write_text("{}")  # no GGUF next to it: skipped, not fatal
    db = Database(f"sqlite:///{tmp_path}/adyton.sqlite3")
    store = VectorStore(db, legacy_root=root).open()
    vector = store.get("sv_0123456789abcdef01234567", ALICE)
    assert (vector.name, vector.created, vector.details) == ("old", 1700000000, {"pooling": "mean"})
    assert np.array_equal(vector.vectors[6], VECTORS[6])
    assert not old.exists() and (root / "vectors.imported" / "sv_0123456789abcdef01234567.gguf").exists()
    store.delete(vector.id, ALICE)
    again = VectorStore(db, legacy_root=root).open()  # a restart: the deleted vector stays deleted
    with pytest.raises(NotFound):
        again.get(vector.id, ALICE)
    db.dispose()
