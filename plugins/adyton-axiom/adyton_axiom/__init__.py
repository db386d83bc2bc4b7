"""adyton-axiom: the Local Axiom API as an adyton wire format.

``POST /api/chat`` with ``{"model", "sessionId", "system_prompt", "messages"}``
answers ``{"message": "<assistant reply>"}``. The ``sessionId`` is the
caller's 64-digit account number, handed to the kernel's auth step as
``Credentials(kind="account_number")``; with adyton-limits installed it must
belong to an enabled account whose limits then apply. See README.md.
"""

from __future__ import annotations

from adyton import hookimpl

from .parse import ACCOUNT_NUMBER_RE, AxiomChat, parse_chat
from .settings import AxiomSettings
from .wire import AxiomWireFormat

__all__ = [
    "ACCOUNT_NUMBER_RE",
    "AxiomChat",
    "AxiomSettings",
    "AxiomWireFormat",
    "parse_chat",
]


@hookimpl
def register_settings(register):
    register("axiom", AxiomSettings)


@hookimpl
def register_wire_formats(register, kernel):
    register(AxiomWireFormat(kernel))

