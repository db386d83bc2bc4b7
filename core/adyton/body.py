"""Reading a JSON request body: the one reader every route uses.

``await adyton.read_json_body()`` (inside a route) reads the current
request's body (over ``server.max_body_bytes``: 413), decodes it and returns
the JSON object, or raises ``InvalidRequest`` (400, ``code="invalid_json"``
or ``"invalid_value"``) saying what is wrong, which the route's wire format
renders in its own shape:

* the body is empty (unless ``empty_ok``), not UTF-8, not JSON (``NaN`` and
  ``Infinity`` are not JSON either), or not an object;
* it is nested deeper than ``server.max_json_depth`` levels (a body of
  thousands of ``[`` would otherwise crash the parser or whatever walks the
  value later with a RecursionError);
* a string anywhere in it (a key or a value) holds an unpaired UTF-16
  surrogate (``"\\ud800"`` is valid JSON but not Unicode text: no tokenizer,
  database or JSON encoder downstream can take it). The error's ``param``
  names where: ``messages[0].content``.

So text that reaches the kernel is always valid Unicode, whichever surface it
came through. A big body is parsed on the kernel's worker threads
(``Kernel.offload``), not on the event loop. For text from elsewhere (a
header, a file), ``check_text(value, field)`` applies the same rule.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest, json_type_name

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel

#: bodies up to this size are parsed on the event loop (a thread hop costs more)
INLINE_PARSE_BYTES = 64 * 1024

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` with any parameters (``charset=utf-8`` ...)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def check_text(value: str, field: str) -> str:
    """``value`` if it is valid Unicode text, else ``InvalidRequest`` naming
    ``field`` (an unpaired surrogate such as ``"\\ud800"``)."""
    if not value.isascii() and _SURROGATE.search(value):
        raise InvalidRequest(
            f"'{field}' contains an unpaired UTF-16 surrogate (not valid Unicode text)",
            param=field, code="invalid_value",
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: one decoder for every body (``json.loads`` with an argument builds a new one, and its scanner, each call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _printable(text: str) -> str:
    """``text``, with lone surrogates written as ``\\ud800`` (for a field
    name in an error message, which must itself be valid text)."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _is_text(value: str) -> bool:
    return value.isascii() or not _SURROGATE.search(value)


def check_json(value: Any, max_depth: int) -> None:
    """Walk a parsed JSON value (iteratively: no recursion to exhaust):
    ``InvalidRequest`` if it is nested deeper than ``max_depth`` or holds a
    string that is not valid Unicode text. Field paths are only built for
    containers and for the string that fails (a body of a million numbers
    costs no million paths)."""
    if isinstance(value, str):
        check_text(value, "body")
        return
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > max_depth:
            raise InvalidRequest(
                f"the request body is nested too deeply (more than {max_depth} levels at "
                f"'{where or 'body'}'; server.max_json_depth)",
                param=where or None, code="invalid_json",
            )
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(key, str) and not _is_text(key):
                check_text(key, _path(where, _printable(key)))
            if isinstance(item, str):
                if not _is_text(item):
                    check_text(item, _path(where, _printable(key) if isinstance(key, str) else key))
            elif isinstance(item, (dict, list)):
                stack.append((item, _path(where, _printable(key) if isinstance(key, str) else key), depth + 1))


def parse_json_body(raw: bytes, *, max_depth: int = 64, empty_ok: bool = False) -> dict[str, Any]:
    """``raw`` as a JSON object, checked as described in this module; blocking
    (CPU) work, so big bodies belong on a worker thread."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise InvalidRequest("the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                             code="invalid_json") from None
    try:
        if text.startswith("\ufeff"):  # (as json.loads refuses it)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            code="invalid_json",
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest(
            f"the request body is nested too deeply (more than {max_depth} levels; server.max_json_depth)",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {json_type_name(body)}",
                             code="invalid_json")
    # Walk the value only if it could fail: text decoded from UTF-8 holds a
    # surrogate only through a \u escape, and a value cannot nest deeper than
    # the body has brackets (those inside strings only make this count higher)
    if b"\\u" in raw or raw.count(b"[") + raw.count(b"{") > max_depth:
        check_json(body, max_depth)
    return body


async def read_json_body(*, require_content_type: bool = False, empty_ok: bool = False,
                         kernel: Kernel | None = None) -> dict[str, Any]:
    """The current request's body as a checked JSON object (see the module
    docstring). ``require_content_type``: refuse (400,
    ``code="invalid_content_type"``) a body not sent as
    ``application/json``. ``empty_ok``: an empty body is ``{}``."""
    from quart import request

    from .kernel import current_kernel

    kernel = kernel or current_kernel()
    if require_content_type:
        content_type = request.headers.get("Content-Type")
        if not is_json_content_type(content_type):
            got = f"'{content_type}'" if content_type else "none"
            raise InvalidRequest(f"Content-Type must be application/json (got {got})",
                                 code="invalid_content_type")
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)  # over server.max_body_bytes: 413
    max_depth = kernel.settings.server.max_json_depth
    if len(raw) <= INLINE_PARSE_BYTES:
        return parse_json_body(raw, max_depth=max_depth, empty_ok=empty_ok)
    return await kernel.offload(parse_json_body, raw, max_depth=max_depth, empty_ok=empty_ok)


__all__ = ["check_json", "check_text", "is_json_content_type", "parse_json_body", "read_json_body"]
