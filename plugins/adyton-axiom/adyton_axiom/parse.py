"""Parsing and validating an Axiom ``/api/chat`` body.

Kept apart from the HTTP layer so that every rule is in one place and can be
read top to bottom. Every refusal is an ``adyton`` error whose ``param`` names
the offending field (``messages[2].content``), which the wire format renders
as ``"field"`` in its error body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from adyton import ChatMessage, Credentials, InvalidRequest, Unauthorized, json_type_name

#: exactly 64 ASCII digits (``\d`` would also accept other scripts' digits)
ACCOUNT_NUMBER_RE = re.compile(r"[0-9]{64}")

#: the keys the Axiom document defines
KNOWN_KEYS = ("model", "sessionId", "system_prompt", "messages")
ROLES = ("user", "assistant")
MESSAGE_KEYS = ("role", "content")

WIRE_FORMAT = "axiom"


@dataclass(slots=True)
class AxiomChat:
    """A validated Axiom request, before it becomes a GenerationRequest."""

    model: str
    credentials: Credentials
    messages: list[ChatMessage]
    #: keys the Axiom document does not define; handed to the kernel as
    #: ``GenerationRequest.extra`` so a plugin may claim them (else 400)
    extra: dict[str, Any]


def credentials_from(body: dict[str, Any], client_address: str | None = None) -> Credentials:
    """The caller's account number as kernel credentials.

    Missing (absent, null or "") and malformed (anything but a string of
    exactly 64 ASCII digits) are 401s here; whether the number belongs to an
    enabled account is the auth plugin's business (adyton-limits).
    """
    session_id = body.get("sessionId")
    if session_id is None or session_id == "":
        raise Unauthorized(
            "missing sessionId: send your 64-digit account number as \"sessionId\" in the request body",
            param="sessionId", code="missing_session_id",
        )
    if not isinstance(session_id, str):
        raise Unauthorized(
            "malformed sessionId: it must be a string of exactly 64 digits, "
            f"not {json_type_name(session_id)}",
            param="sessionId", code="malformed_session_id",
        )
    if not ACCOUNT_NUMBER_RE.fullmatch(session_id):
        if session_id.isascii() and session_id.isdigit():
            detail = f"it has {len(session_id)} digits"
        else:
            detail = "it contains characters other than the digits 0-9"
        raise Unauthorized(
            f"malformed sessionId: an account number is exactly 64 digits ({detail})",
            param="sessionId", code="malformed_session_id",
        )
    return Credentials(kind="account_number", secret=session_id, wire_format=WIRE_FORMAT,
                       client_address=client_address)


def _string_field(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"missing '{key}'", param=key, code="missing_field")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string, not {json_type_name(value)}", param=key,
                             code="invalid_type")
    return value


def parse_messages(body: dict[str, Any]) -> list[ChatMessage]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("missing 'messages': send an array of {role, content} objects",
                             param="messages", code="missing_field")
    if not isinstance(messages, list):
        raise InvalidRequest(f"'messages' must be an array, not {json_type_name(messages)}",
                             param="messages", code="invalid_type")
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages", code="empty_messages")
    out: list[ChatMessage] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object with 'role' and 'content', "
                                 f"not {json_type_name(message)}", param=where, code="invalid_type")
        for key in message:
            if key not in MESSAGE_KEYS:
                raise InvalidRequest(f"'{where}' has an unknown key '{key}' (a message has only "
                                     "'role' and 'content')", param=f"{where}.{key}",
                                     code="unknown_field")
        role = message.get("role")
        if role is None:
            raise InvalidRequest(f"missing '{where}.role'", param=f"{where}.role", code="missing_field")
        if role not in ROLES:
            hint = " (put system instructions in 'system_prompt')" if role == "system" else ""
            shown = json.dumps(role) if not isinstance(role, str) else f"'{role}'"
            raise InvalidRequest(f"'{where}.role' must be \"user\" or \"assistant\", not {shown}{hint}",
                                 param=f"{where}.role", code="invalid_role")
        if "content" not in message or message["content"] is None:
            raise InvalidRequest(f"missing '{where}.content'", param=f"{where}.content",
                                 code="missing_field")
        content = message["content"]
        if not isinstance(content, str):
            raise InvalidRequest(f"'{where}.content' must be a string, not {json_type_name(content)}",
                                 param=f"{where}.content", code="invalid_type")
        out.append(ChatMessage(role=role, content=content))
    return out


def parse_chat(body: dict[str, Any], client_address: str | None = None) -> AxiomChat:
    """Validate a decoded body. The account number is checked first (401),
    then every other field (400)."""
    credentials = credentials_from(body, client_address)
    model = _string_field(body, "model", required=True)
    assert model is not None
    if not model.strip():
        raise InvalidRequest("'model' must not be empty", param="model", code="invalid_value")
    system_prompt = _string_field(body, "system_prompt", required=False)
    messages = parse_messages(body)
    if system_prompt:
        messages.insert(0, ChatMessage(role="system", content=system_prompt))
    extra = {key: value for key, value in body.items() if key not in KNOWN_KEYS}
    return AxiomChat(model=model, credentials=credentials, messages=messages, extra=extra)
