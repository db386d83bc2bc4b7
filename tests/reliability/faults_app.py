"""The app of the fault tests that kill the server with ``kill -9``: OpenAI +
Axiom + adyton-limits + a scripted backend, served in its own process by
``adyton.testing.ServerProcess`` (see ``faults_helpers.start_server``)."""

from __future__ import annotations

from typing import Any

import adyton_axiom
import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend
from adyton_limits import LimitsPlugin


def make_app(settings: dict[str, Any], delay_s: float = 0.002) -> Any:
    backend = ScriptedBackend(["a"] * 400, delay_s=delay_s, max_concurrency=8, eos_at_end=False)
    return create_app(settings=settings, load_entrypoints=False,
                      plugins=[adyton_openai, adyton_axiom, BackendPlugin(backend), LimitsPlugin()])
