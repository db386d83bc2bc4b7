"""Helpers for testing adyton and its plugins (and, in ``pytest_plugin``,
the pytest plugin that installing adyton registers: the ``requires_model``
marker and the ``real_model``, ``real_models_dir``, ``make_app`` and
``redis_server`` fixtures).

* ``ScriptedBackend``: a real ``Backend`` whose "model" yields a fixed script
  of tokens, with a settable delay per token. It builds real logits (the
  scripted token is the most likely) and calls the kernel's sampler chain,
  so sampling, processors, stop strings, the queue and cancellation all run
  for real — only the neural network is replaced. ``BackendPlugin``
  registers backend objects as a plugin. (``scripted.py``)
* ``JsonTestWire``: a minimal wire format (``POST /t/generate`` takes a
  ``GenerationRequest`` as JSON; credentials from ``x-api-key``/``x-key``,
  ``Authorization: Bearer`` or a ``sessionId`` body field; errors as
  ``{"err": {...}}``) for testing plugins that are not wire formats.
  (``wire.py``)
* ``serve_in_thread``: run an app on hypercorn on a free loopback port in a
  background thread, for tests over a real socket; ``LoopbackServers``: a
  fixture's worth of them (fixed plugins plus scripted backends);
  ``ServerProcess``: an app in its own process, for tests that kill it
  (``python -m adyton.testing.serve``); ``RedisServer``: a real
  redis-server. (``servers.py``, ``serve.py``)
* ``BackendConformance`` (with ``ConformanceServer`` and ``RecordingLimiter``):
  the backend-neutral tests every backend plugin runs against itself
  (OpenAI and Axiom wires, guided JSON, the context check, exact limits).
  (``conformance.py``)
* ``model_path`` / ``require_model`` / ``link_model``: the real model for
  real-model tests (the file ``ADYTON_TEST_MODEL`` names), and a models
  directory that holds a link to it (for adyton-llama's ``[llama]
  models_dir``). A missing model skips the test, or fails it when
  ``ADYTON_REQUIRE_MODEL`` is set; ``unavailable(reason)`` does the same for
  any other missing prerequisite. (``model.py``)
"""

from __future__ import annotations

from .conformance import BackendConformance, ConformanceServer, RecordingLimiter
from .model import link_model, model_path, require_model, required, unavailable
from .postgres import PostgresServer, PostgresUnavailable, start_postgres
from .scripted import BackendPlugin, ScriptedBackend
from .servers import LoopbackServers, RedisServer, ServerProcess, ServerThread, free_port, serve_in_thread
from .wire import JsonTestWire, JsonTestWirePlugin

__all__ = [
    "BackendConformance",
    "BackendPlugin",
    "ConformanceServer",
    "JsonTestWire",
    "JsonTestWirePlugin",
    "LoopbackServers",
    "PostgresServer",
    "PostgresUnavailable",
    "RecordingLimiter",
    "RedisServer",
    "ScriptedBackend",
    "ServerProcess",
    "ServerThread",
    "free_port",
    "link_model",
    "model_path",
    "require_model",
    "required",
    "serve_in_thread",
    "start_postgres",
    "unavailable",
]
