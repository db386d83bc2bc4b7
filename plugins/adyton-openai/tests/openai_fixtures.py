"""Fixtures (a module, not conftest.py: the kernel tests import their own
``conftest`` by name, so a second conftest module would shadow it). Test
modules import them with ``from openai_fixtures import serve, server, sdk``.
The app: the OpenAI wire format and a scripted backend, served by hypercorn
on a loopback port."""

from __future__ import annotations

import pytest

import adyton_openai
from adyton.testing import LoopbackServers


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
