"""A full disk under the usage ledger (issue 15, item 7), on a real
filesystem: a small tmpfs mounted (as root) on ``$ADYTON_HOME/limits`` and
filled up. Nothing is lost and nothing is served unaccounted: the row of the
request in flight when the disk filled is kept in memory, new requests get
503 ``ledger_unavailable`` in their wire format's shape, and once there is
room again the kept row is written and requests are served again."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from faults_helpers import kernel_of, ledger, limits_app, new_account, serving, wait_for

from adyton.testing import ScriptedBackend
from adyton_limits import service_for


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "2m"):
    """A tmpfs of ``size`` on ``path`` for the test's duration."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a small tmpfs for the full-disk test")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


def test_disk_full_keeps_rows_and_refuses_new_work_until_there_is_room(tmp_path):
    home = tmp_path / "home"
    backend = ScriptedBackend(["a"] * 200, delay_s=0.01, eos_at_end=False)
    with small_filesystem(home / "limits"):
        db = home / "limits" / "accounts.sqlite3"  # the ledger on the small filesystem
        app = limits_app(home, backend, limits={"db_path": str(db)})
        acct = new_account(app)
        url, auth = "/v1/chat/completions", {"Authorization": f"Bearer {acct.api_key}"}
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        with serving(app) as server:
            base = server.base_url
            assert httpx.post(base + url, json={**chat, "max_tokens": 3}, headers=auth,
                              timeout=30).status_code == 200
            # a request in flight while the disk fills up
            answer = {}
            flight = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
                base + url, json={**chat, "max_tokens": 100}, headers=auth, timeout=60)))
            flight.start()
            assert backend.running.wait(10)
            filler = fill(home / "limits")
            flight.join(60)
            r = answer["r"]
            assert r.status_code == 200  # it ran: the client gets its answer...
            svc = service_for(kernel_of(app))
            assert len(svc.pending_rows) == 1  # ...and its row is kept, not dropped
            assert len(ledger(db, acct.account.id)) == 1

            # no new work while usage cannot be recorded: 503 in OpenAI's shape
            refused = httpx.post(base + url, json={**chat, "max_tokens": 3}, headers=auth, timeout=30)
            assert refused.status_code == 503, refused.text
            err = refused.json()["error"]
            assert err["code"] == "ledger_unavailable" and "disk" in err["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            axiom = httpx.post(base + "/api/chat", timeout=30, json={
                "model": "scripted-model", "sessionId": acct.account_number, "system_prompt": "",
                "messages": chat["messages"]})
            assert axiom.status_code == 503 and axiom.json()["code"] == "ledger_unavailable"
            # the admin API's writes: 503 too, not a 500
            admin = svc.admin_key_path.read_text().strip()
            created = httpx.post(base + "/admin/accounts", json={"tier": 1, "name": "late"}, timeout=30,
                                 headers={"Authorization": f"Bearer {admin}"})
            assert created.status_code == 503, created.text
            assert created.json()["error"]["code"] == "accounts_db_unavailable"

            filler.unlink()  # room again: the kept row is written, work resumes
            wait_for(lambda: not svc.pending_rows and svc.ledger_error is None, timeout=15,
                     what="the kept row to be written")
            rows = ledger(db, acct.account.id)
            assert [row["outcome"] for row in rows] == ["ok", "ok"]
            assert rows[1]["completion_tokens"] == r.json()["usage"]["completion_tokens"] == 100
            assert httpx.post(base + url, json={**chat, "max_tokens": 3}, headers=auth,
                              timeout=30).status_code == 200
        assert len(ledger(db, acct.account.id)) == 3  # every answer has its row; refusals cost nothing


def test_rows_still_unwritable_at_shutdown_are_logged_in_full(tmp_path, caplog):
    home = tmp_path / "home"
    backend = ScriptedBackend(["a"] * 50, delay_s=0.01, eos_at_end=False)
    with small_filesystem(home / "limits"):
        app = limits_app(home, backend, limits={"db_path": str(home / "limits" / "accounts.sqlite3")})
        acct = new_account(app)
        with serving(app) as server:
            answer = {}
            flight = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
                server.base_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 40},
                headers={"Authorization": f"Bearer {acct.api_key}"}, timeout=60)))
            flight.start()
            assert backend.running.wait(10)
            fill(home / "limits")
            flight.join(60)
            assert answer["r"].status_code == 200
        # stopped with the disk still full: the row is in the log, whole
        lost = [r.getMessage() for r in caplog.records if "ledger row LOST" in r.getMessage()]
        assert len(lost) == 1
        assert acct.account.id in lost[0] and '"completion_tokens": 40' in lost[0]
