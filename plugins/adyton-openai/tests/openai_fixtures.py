"""Fixtures (a module, not conftest.py: the kernel tests import their own
``conftest`` by name, so a second conftest module would shadow it). Test
modules import them with ``from openai_fixtures import serve, server, sdk``.
The app: the OpenAI wire format and a scripted backend, served by hypercorn
on a loopback port."""

from __future__ import annotations

import contextlib

import pytest

import adyton_openai
from adyton import Authenticator, Limiter, Principal, Reservation, Unauthorized, create_app, hookimpl
from adyton.testing import LoopbackServers, ServerThread, link_model


@pytest.fixture
def serve(tmp_path):
    """serve(*backends, plugins=(), settings=None) -> ServerThread (started)."""
    servers = LoopbackServers(tmp_path / "home", adyton_openai)
    yield servers
    servers.stop_all()


@pytest.fixture
def server(serve):
    return serve()


@pytest.fixture
def sdk():
    """sdk(server, api_key=..., asynchronous=False, **kw) -> an official OpenAI client (no retries)."""
    import openai

    def make(server, api_key="sk-test", asynchronous=False, **kwargs):
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        kwargs.setdefault("max_retries", 0)
        return cls(base_url=server.base_url + "/v1", api_key=api_key, **kwargs)

    return make




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
