"""Constraints -> llguidance grammars, refusing what cannot be enforced.

``compile_grammar`` is vocabulary-independent and cached by a content hash
of the constraint (kind, value, syntax). ``Compiler.matcher`` adds the
vocabulary: it validates the grammar against the tokenizer once, keeps a
pristine ``LLMatcher`` per (vocabulary, constraint) and hands out
``deep_copy()``s of it (≈1 µs instead of ≈1 ms for a fresh matcher).

Everything wrong with a constraint raises ``adyton.UnsupportedConstraint``
naming the problem: a schema that fails its metaschema, a keyword llguidance
cannot enforce ("Unimplemented keys"), a regex or grammar that does not
parse. A constraint is never silently relaxed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import jsonschema
import llguidance as llg
from llguidance.gbnf_to_lark import any_to_lark

from adyton import Constraint, UnsupportedConstraint

from .tokenizer import GuidedTokenizer

if TYPE_CHECKING:  # pragma: no cover
    from llguidance._lib import JsonCompileOptions

#: JSON layout the model must follow: one space after ':' and ',', no other
#: whitespace (unbounded whitespace lets a small model loop on spaces or
#: newlines until max_tokens). A schema's own "x-guidance" options override
#: these (they are llguidance "defaults").
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

#: what {"type": "json_object"} means
ANY_OBJECT: dict[str, Any] = {"type": "object"}

#: keys whose values are data, not subschemas (no regex rewriting inside)
_DATA_KEYS = frozenset({"const", "enum", "default", "examples", "example"})


def content_hash(constraint: Constraint, declared_keys: bool = True) -> str:
    payload = json.dumps(
        # the source is part of the key only so that cached refusals name it
        {"kind": constraint.kind, "value": constraint.value, "syntax": constraint.syntax,
         "source": constraint.source, "declared_keys": declared_keys},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def ascii_digits(regex: str) -> str:
    r"""Rewrite ``\d`` to ``[0-9]`` (``0-9`` inside a class).

    In llguidance (Rust ``regex``) ``\d`` is Unicode-aware and also matches
    Arabic-Indic, Devanagari ... digits, which a model will happily produce
    and which downstream ``int()`` parsers do not expect."""
    out: list[str] = []
    i, n, in_class = 0, len(regex), False
    while i < n:
        c = regex[i]
        if c == "\\" and i + 1 < n:
            nxt = regex[i + 1]
            if nxt == "d":
                out.append("0-9" if in_class else "[0-9]")
            else:
                out.append(c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and regex[i] == "^":
                out.append("^")
                i += 1
            if i < n and regex[i] == "]":  # a literal ']' first in the class
                out.append("]")
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _rewrite_schema_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _DATA_KEYS:
                out[key] = value
            elif key == "pattern" and isinstance(value, str):
                out[key] = ascii_digits(value)
            elif key == "patternProperties" and isinstance(value, dict):
                out[key] = {ascii_digits(k): _rewrite_schema_patterns(v) for k, v in value.items()}
            elif key == "properties" and isinstance(value, dict):
                out[key] = {k: _rewrite_schema_patterns(v) for k, v in value.items()}
            else:
                out[key] = _rewrite_schema_patterns(value)
        return out
    if isinstance(node, list):
        return [_rewrite_schema_patterns(v) for v in node]
    return node


#: deepest nesting of objects/arrays a JSON schema may have (a schema nested
#: hundreds of levels would exhaust the recursion of every schema walker)
MAX_SCHEMA_DEPTH = 40


def _check_depth(schema: Any, source: str) -> None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_SCHEMA_DEPTH:
                raise UnsupportedConstraint(
                    f"the JSON schema from '{source}' is nested too deeply (more than "
                    f"{MAX_SCHEMA_DEPTH} levels of objects and arrays)", param=source)
            items = node.values() if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)


def _resolve_local(schema: dict[str, Any], ref: str) -> Any:
    """The node a local ``$ref`` ("#", "#/$defs/a") points at, or None."""
    if ref == "#":
        return schema
    if not ref.startswith("#/"):
        return None
    node: Any = schema
    for part in ref[2:].split("/"):
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _check_ref_cycles(schema: dict[str, Any], source: str) -> None:
    """Refuse a ``$ref`` that only leads back to itself (``{"$ref": "#"}``):
    such a schema describes nothing (a validator recurses forever on it).
    Recursion with a base case (a tree whose children are ``{"$ref": "#"}``)
    is fine."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(v for k, v in node.items() if k not in _DATA_KEYS)
        seen: list[int] = []
        current: Any = node
        while isinstance(current, dict) and isinstance(current.get("$ref"), str):
            if id(current) in seen:
                raise UnsupportedConstraint(
                    f"the JSON schema from '{source}' has a $ref ({node['$ref']!r}) that only "
                    "refers back to itself, so it describes no value", param=source)
            seen.append(id(current))
            current = _resolve_local(schema, current["$ref"])


def declared_keys_only(node: Any, in_all_of: bool = False) -> Any:
    """``additionalProperties: false`` on every object schema that lists
    ``properties`` and says nothing about other keys (no
    ``additionalProperties``, ``patternProperties`` or
    ``unevaluatedProperties``): the reading structured-output users expect
    (a pydantic model's keys and no others). Members of an ``allOf`` are
    left open (closing each would forbid the others' keys)."""
    if isinstance(node, list):
        return [declared_keys_only(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA_KEYS:
            out[key] = value
        elif key == "allOf" and isinstance(value, list):
            out[key] = [declared_keys_only(v, in_all_of=True) for v in value]
        elif key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas") \
                and isinstance(value, dict):
            out[key] = {k: declared_keys_only(v) for k, v in value.items()}
        else:
            out[key] = declared_keys_only(value)
    if (isinstance(out.get("properties"), dict) and not in_all_of
            and not {"additionalProperties", "patternProperties", "unevaluatedProperties"} & out.keys()):
        out["additionalProperties"] = False
    return out


def _json_schema(schema: dict[str, Any], declared_keys: bool) -> dict[str, Any]:
    """The schema as llguidance gets it: ``\\d`` rewritten, declared keys only
    (when asked), the fixed JSON layout unless the schema sets its own."""
    schema = _rewrite_schema_patterns(schema)
    if declared_keys:
        schema = declared_keys_only(schema)
    return schema


def _check_tool_schema(name: str, params: dict[str, Any], source: str, declared_keys: bool) -> None:
    """Refuse a tool whose parameters schema cannot be enforced, naming the
    tool (the combined grammar's error would only give a position)."""
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(_json_schema(params, declared_keys), defaults=JSON_OPTIONS)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, None)
    except (ValueError, TypeError) as exc:
        is_error, messages = True, [str(exc)]
    if is_error:
        raise UnsupportedConstraint(
            f"the parameters schema of tool '{name}' from '{source}' cannot be enforced: "
            f"{_clean(messages[0] if messages else '')}", param=source)


def tool_calls_lark(value: Any, source: str, declared_keys: bool) -> str:
    """The grammar of a ``tool_calls`` constraint: ``<tool_call>`` JSON
    ``</tool_call>`` blocks (one, or several on their own lines when
    ``parallel``), each JSON ``{"name": <a tool>, "arguments": <valid for its
    parameters>}``. With ``lazy``, free text comes first and the grammar
    only takes hold once the model writes ``<tool_call>``."""
    from adyton.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

    if not isinstance(value, dict) or not isinstance(value.get("tools"), list) or not value["tools"]:
        raise UnsupportedConstraint(
            f"the tool_calls constraint from '{source}' needs a non-empty list of tools", param=source)
    bodies = []
    for i, tool in enumerate(value["tools"]):
        name = tool.get("name") if isinstance(tool, dict) else None
        params = tool.get("parameters", {"type": "object"}) if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            raise UnsupportedConstraint(f"tool {i} from '{source}' has no name", param=source)
        where = f"{source} (tool '{name}')"
        params = check_schema(params, where)
        _check_tool_schema(name, params, source, declared_keys)
        params = dict(params)
        defs = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}
        call = {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            **defs,  # the arguments' "#/$defs/..." references resolve at this root
            "x-guidance": JSON_OPTIONS,
        }
        bodies.append(f"call_{i}: %json {json.dumps(_json_schema(call, declared_keys))}")
    open_, close = json.dumps(TOOL_CALL_OPEN), json.dumps(TOOL_CALL_CLOSE)
    body = " | ".join(f"call_{i}" for i in range(len(bodies)))
    more = f' ("\\n" {open_} body)*' if value.get("parallel") else ""
    if value.get("lazy"):
        head = ["start: TEXT | head body" + more, f"head[lazy]: TEXT {open_}", "TEXT: /(.|\\n)*/"]
    else:
        head = [f"start: {open_} body" + more]
    return "\n".join(["%llguidance {}", *head, f"body: ({body}) {close}", *bodies]) + "\n"


def check_schema(schema: Any, source: str) -> dict[str, Any]:
    """Metaschema check (the schema's own $schema, else draft 2020-12), a
    depth limit and no self-referring ``$ref``. Returns ``schema``, now
    known to be an object."""
    if not isinstance(schema, dict):
        raise UnsupportedConstraint(
            f"the JSON schema from '{source}' must be a JSON object, not {type(schema).__name__}",
            param=source,
        )
    _check_depth(schema, source)
    _check_ref_cycles(schema, source)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise UnsupportedConstraint(
            f"invalid JSON schema from '{source}' at {where}: {exc.message}", param=source
        ) from None
    return schema


def _what(constraint: Constraint) -> str:
    return {
        "json_schema": "JSON schema",
        "json_object": "JSON object constraint",
        "regex": "regex",
        "grammar": "grammar",
        "choice": "choice list",
        "tool_calls": "tool-call constraint",
    }[constraint.kind]


def compile_grammar(constraint: Constraint, declared_keys: bool = True) -> str:
    """The llguidance grammar for ``constraint`` (not yet checked against a
    tokenizer). ``declared_keys``: objects take only their declared keys
    unless the schema allows more (see ``declared_keys_only``). Raises
    UnsupportedConstraint."""
    kind, value, source = constraint.kind, constraint.value, constraint.source
    try:
        if kind == "json_schema":
            check_schema(value, source)
            return llg.LLMatcher.grammar_from_json_schema(
                _json_schema(value, declared_keys), defaults=JSON_OPTIONS
            )
        if kind == "tool_calls":
            return llg.LLMatcher.grammar_from_lark(tool_calls_lark(value, source, declared_keys))
        if kind == "json_object":
            if value not in (None, {}, ANY_OBJECT):
                raise UnsupportedConstraint(
                    f"a json_object constraint from '{source}' takes no value", param=source)
            return llg.LLMatcher.grammar_from_json_schema(ANY_OBJECT, defaults=JSON_OPTIONS)
        if kind == "regex":
            if not isinstance(value, str) or not value:
                raise UnsupportedConstraint(
                    f"the regex from '{source}' must be a non-empty string", param=source)
            return llg.LLMatcher.grammar_from_regex(ascii_digits(value))
        if kind == "grammar":
            if not isinstance(value, str) or not value.strip():
                raise UnsupportedConstraint(
                    f"the grammar from '{source}' must be a non-empty string", param=source)
            if constraint.syntax == "lark":
                return llg.LLMatcher.grammar_from_lark(value)
            try:
                # "gbnf", or None: llguidance tells GBNF from Lark by itself
                lark = any_to_lark(value)
            except Exception as exc:  # noqa: BLE001 - the converter raises plain errors
                raise UnsupportedConstraint(
                    f"the grammar from '{source}' is not valid GBNF/Lark: {exc}", param=source
                ) from None
            return llg.LLMatcher.grammar_from_lark(lark)
        if kind == "choice":
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, str) and v for v in value)):
                raise UnsupportedConstraint(
                    f"the choice constraint from '{source}' must be a non-empty list of "
                    "non-empty strings", param=source)
            lark = "start: " + " | ".join(json.dumps(v) for v in dict.fromkeys(value))
            return llg.LLMatcher.grammar_from_lark(lark)
    except UnsupportedConstraint:
        raise
    except (ValueError, TypeError) as exc:
        raise UnsupportedConstraint(
            f"the {_what(constraint)} from '{source}' could not be compiled: {exc}", param=source
        ) from None
    raise UnsupportedConstraint(f"unknown constraint kind {kind!r}", param=source)  # pragma: no cover


def _clean(message: str) -> str:
    """llguidance errors can carry a parser dump; keep the first lines."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    head = []
    for line in lines:
        if line.startswith("<state>") or line.startswith("<grammar>"):
            break
        head.append(line.rstrip())
        if len(head) >= 4:
            break
    return " ".join(head) or "unknown error"


def validate(grammar: str, constraint: Constraint, tokenizer: llg.LLTokenizer | None) -> None:
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise UnsupportedConstraint(
            f"the {_what(constraint)} from '{constraint.source}' cannot be enforced: "
            f"{_clean(messages[0] if messages else '')}",
            param=constraint.source,
        )


@dataclass
class Compiled:
    hash: str
    grammar: str
    template: llg.LLMatcher  #: pristine matcher; deep_copy() per request


class Compiler:
    """Thread-safe LRU caches: grammar text by content hash, and a pristine
    matcher per (vocabulary, content hash). Refusals are cached too."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._grammars: OrderedDict[str, str | UnsupportedConstraint] = OrderedDict()
        self._matchers: OrderedDict[tuple[str, str], Compiled | UnsupportedConstraint] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _put(self, cache: OrderedDict, key: Any, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self.max_entries:
                cache.popitem(last=False)

    def _get(self, cache: OrderedDict, key: Any) -> Any:
        with self._lock:
            value = cache.get(key)
            if value is not None:
                cache.move_to_end(key)
            return value

    def is_cached(self, constraint: Constraint, tok: GuidedTokenizer | None, declared_keys: bool = True) -> bool:
        key = content_hash(constraint, declared_keys)
        if tok is None:
            return self._get(self._grammars, key) is not None
        return self._get(self._matchers, (tok.key, key)) is not None

    def grammar(self, constraint: Constraint, declared_keys: bool = True) -> str:
        key = content_hash(constraint, declared_keys)
        hit = self._get(self._grammars, key)
        if hit is None:
            try:
                hit = compile_grammar(constraint, declared_keys)
                validate(hit, constraint, None)
            except UnsupportedConstraint as exc:
                hit = exc
            self._put(self._grammars, key, hit)
        if isinstance(hit, UnsupportedConstraint):
            raise _again(hit, constraint)
        return hit

    def matcher(self, constraint: Constraint, tok: GuidedTokenizer, declared_keys: bool = True) -> Compiled:
        key = content_hash(constraint, declared_keys)
        hit = self._get(self._matchers, (tok.key, key))
        if hit is None:
            self.misses += 1
            try:
                grammar = self.grammar(constraint, declared_keys)
                template = llg.LLMatcher(tok.lltok, grammar, log_level=0)
                if template.is_error():
                    raise UnsupportedConstraint(
                        f"the {_what(constraint)} from '{constraint.source}' cannot be enforced: "
                        f"{_clean(template.get_error())}", param=constraint.source)
                hit = Compiled(key, grammar, template)
            except UnsupportedConstraint as exc:
                hit = exc
            self._put(self._matchers, (tok.key, key), hit)
        else:
            self.hits += 1
        if isinstance(hit, UnsupportedConstraint):
            raise _again(hit, constraint)
        return hit


def _again(cached: UnsupportedConstraint, constraint: Constraint) -> UnsupportedConstraint:
    """A fresh exception (tracebacks must not pile up on a cached one),
    naming this request's source."""
    return UnsupportedConstraint(cached.message, param=constraint.source)
