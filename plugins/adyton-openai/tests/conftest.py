"""Fixtures of the adyton-openai tests: the OpenAI wire format and scripted
backends served by hypercorn on loopback ports, the official Python client,
and node with the JavaScript SDKs (helpers: ``openai_helpers``)."""

from __future__ import annotations

import shutil

import pytest
from openai_helpers import node_ready

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


@pytest.fixture(scope="module")
def node_sdk():
    """The node executable, with the npm packages of ``tests/js`` installed."""
    if not node_ready():
        pytest.skip("node, npm or the npm packages of tests/js are not available")
    return shutil.which("node")
