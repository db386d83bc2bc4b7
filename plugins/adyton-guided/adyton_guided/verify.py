"""Verifiers: run on the finished text of a choice, after generation.

* ``syntax``: JSON outputs must parse (and be an object for json_object);
  regex / grammar / choice outputs must be accepted, as text, by a fresh
  copy of the compiled matcher (so a stop string that cut the output is
  caught too).
* ``json_schema``: the parsed output validates against the schema
  (``jsonschema``, with format checking).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import jsonschema

VERIFIERS = ("syntax", "json_schema")

_lock = threading.Lock()
_validators: OrderedDict[str, Any] = OrderedDict()


def schema_validator(key: str, schema: dict[str, Any]) -> Any:
    with _lock:
        hit = _validators.get(key)
        if hit is not None:
            return hit
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    with _lock:
        _validators[key] = validator
        while len(_validators) > 256:
            _validators.popitem(last=False)
    return validator


def default_verifiers(kind: str) -> list[str]:
    return ["syntax", "json_schema"] if kind == "json_schema" else ["syntax"]


def check_json(text: str, want_object: bool) -> tuple[dict[str, Any], Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return {"passed": False, "error": f"not valid JSON: {exc}"}, None
    if want_object and not isinstance(value, dict):
        return {"passed": False, "error": f"expected a JSON object, got {type(value).__name__}"}, None
    return {"passed": True}, value


def check_schema(validator: Any, value: Any) -> dict[str, Any]:
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except RecursionError:  # a $ref cycle the compile-time check did not catch
        return {"passed": False, "error": "the schema's references recurse without end on this value"}
    if error is None:
        return {"passed": True}
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return {"passed": False, "error": f"at {where}: {error.message}"}
