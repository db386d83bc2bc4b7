"""Fixtures (a module, not conftest.py: the kernel tests import their own
``conftest`` by name, so a second conftest module would shadow it). Test
modules import them with ``from openai_fixtures import serve, server, sdk``.
The app: the OpenAI wire format and a scripted backend, served by hypercorn
on a loopback port."""

from __future__ import annotations

import contextlib

import pytest

import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend, ServerThread


@pytest.fixture
def serve(tmp_path):
    """serve(backend=None, plugins=(), settings=None) -> ServerThread (started)."""
    servers: list[ServerThread] = []

    def start(*backends, plugins=(), settings=None):
        if not backends:
            backends = (ScriptedBackend(),)
        merged = {"home": str(tmp_path / "home")}
        merged.update(settings or {})
        app = create_app(settings=merged, plugins=[adyton_openai, BackendPlugin(*backends), *plugins],
                         load_entrypoints=False)
        server = ServerThread(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


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
