"""adyton-openai: the OpenAI wire format.

``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, streaming and not, with OpenAI's error shape,
so the official SDKs work unmodified, and ``/v1/responses`` (stored
responses: a table in the kernel's database). Settings: the ``[openai]``
section.
"""

from __future__ import annotations

from adyton import hookimpl

from .settings import OpenAISettings
from .wire import OpenAIWire

__all__ = ["OpenAISettings", "OpenAIWire"]


@hookimpl
def register_settings(register):
    register("openai", OpenAISettings)


@hookimpl
def register_migrations(register, kernel):
    from .migrations import VERSION_TABLE, VERSIONS

    register(VERSIONS, VERSION_TABLE)  # stored /v1/responses: a table in the kernel's database


@hookimpl
def register_wire_formats(register, kernel):
    register(OpenAIWire())
