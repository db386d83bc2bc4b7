"""Helpers of the adyton-openai tests (the fixtures are in ``conftest.py``):
``Accounts`` (API keys and a recording ledger), ``real_model_server`` (the
real default model behind adyton-openai), and the node SDKs' directory."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import adyton_openai
from adyton import Authenticator, Limiter, Principal, Reservation, Unauthorized, create_app, hookimpl
from adyton.testing import ServerThread, link_model


@contextlib.contextmanager
def real_model_server(tmp_path_factory, *plugins, llama=None):
    """adyton-openai and adyton-llama over the real default model (offered
    through ``[llama] models_dir``), plus ``plugins``, on a loopback hypercorn
    server; yields its base URL. For module-scoped fixtures of real-model
    tests: ``with real_model_server(tmp_path_factory, adyton_guided) as url:
    yield url``. ``llama``: more ``[llama]`` settings."""
    import adyton_llama

    models = link_model(tmp_path_factory.mktemp("models"))
    settings = {"home": str(tmp_path_factory.mktemp("home")),
                "llama": {"models_dir": str(models), **(llama or {})}}
    app = create_app(settings=settings, plugins=[adyton_openai, adyton_llama, *plugins], load_entrypoints=False)
    server = ServerThread(app).start()
    try:
        yield server.base_url
    finally:
        with contextlib.suppress(Exception):
            server.stop()

#: the node packages the JavaScript SDK tests run (package.json; node_modules is not committed)
JS_DIR = Path(__file__).parent / "js"


def _js_installed() -> bool:
    """Every dependency of package.json is in node_modules."""
    deps = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    return all((JS_DIR / "node_modules" / name).is_dir() for name in deps)


def node_ready() -> bool:
    """node is on PATH and JS_DIR's packages are installed (``npm ci`` runs
    once if they are not)."""
    node = shutil.which("node")
    if node is None:
        return False
    if _js_installed():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    # install exactly what package-lock.json pins (node_modules is not committed)
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=300)
    return result.returncode == 0 and _js_installed()


class _Keys(Authenticator):
    name = "keys"

    def __init__(self, keys):
        self.keys = keys

    async def authenticate(self, credentials):
        if credentials.secret in self.keys:
            return Principal(id=credentials.secret)
        raise Unauthorized("unknown API key")


class _Ledger(Limiter):
    name = "ledger"

    def __init__(self):
        self.settled: list[tuple[str, int, int, str]] = []

    async def reserve(self, principal, cost):
        return Reservation(principal, cost, headers={"x-ratelimit-remaining-tokens": "1000"})

    async def settle(self, reservation, usage, outcome):
        self.settled.append((reservation.principal.id, usage.prompt_tokens, usage.completion_tokens, outcome))


class Accounts:
    """A plugin with API keys (default ``sk-a``, ``sk-b``: principals of the
    same ids; other keys are 401) and a limiter that admits everything and
    records each settle in ``settled`` as (principal, prompt tokens,
    completion tokens, outcome), as the limits plugin's ledger would."""

    __name__ = "accounts"

    def __init__(self, keys=("sk-a", "sk-b")):
        self.keys = _Keys(keys)
        self.ledger = _Ledger()
        self.settled = self.ledger.settled

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(self.keys)

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.ledger)
