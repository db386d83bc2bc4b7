"""Axionic inference policies: the inline ``policy`` object, saved policies
(``policy_id``), and their translation into kernel ``Constraint``s.

A policy::

    {"sampling":    {"method": "guided-generation", "temperature": 0.2, "top_p": 0.9},
     "constraints": {"json_mode": true, "json_schema": {...}}       # or regex_pattern / grammar
     "verifiers":   {"enabled": ["syntax", "json_schema"], "repair_on_failure": true}}

Unknown fields are refused (400) rather than ignored, so a policy never does
less than its author believes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adyton import Constraint, Database, GenerationRequest, InvalidRequest, NotFound, Principal, invalid_from_validation

from .migrations import VERSION_TABLE, VERSIONS

log = logging.getLogger("adyton.guided")

GUIDED = "guided-generation"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingPolicy(_Strict):
    method: Literal["guided-generation", "standard"] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = None
    #: a steering vector (handed on in GenerationRequest.extra: needs adyton-steer)
    steering_vector_id: str | None = None
    steering_strength: float | None = None


class ConstraintsPolicy(_Strict):
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    regex_pattern: str | None = None
    grammar: str | None = None
    #: adyton extension: "lark" or "gbnf" (default: detected)
    grammar_syntax: Literal["lark", "gbnf"] | None = None
    #: adyton extension: the output is exactly one of these strings
    choices: list[str] | None = None


class VerifiersPolicy(_Strict):
    enabled: list[Literal["syntax", "json_schema"]] | None = None
    repair_on_failure: bool = False
    #: adyton extension: the repair budget past max_tokens
    max_repair_tokens: int | None = Field(None, ge=1, le=4096)


class Policy(_Strict):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    sampling: SamplingPolicy = Field(default_factory=SamplingPolicy)
    constraints: ConstraintsPolicy = Field(default_factory=ConstraintsPolicy)
    verifiers: VerifiersPolicy = Field(default_factory=VerifiersPolicy)


def parse_policy(raw: Any, param: str = "policy") -> Policy:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be a JSON object", param=param)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc, prefix=param, param=param) from None


def policy_constraint(policy: Policy, source: str, policy_id: str | None = None) -> Constraint | None:
    """The constraint a policy asks for, or None. Raises InvalidRequest for
    contradictions."""
    c = policy.constraints
    given = [name for name in ("json_schema", "regex_pattern", "grammar", "choices")
             if getattr(c, name) is not None]
    if len(given) > 1:
        raise InvalidRequest(
            f"'{source}.constraints' sets {' and '.join(given)}; use one constraint per request",
            param=source)
    if c.json_mode and given and given[0] != "json_schema":
        raise InvalidRequest(
            f"'{source}.constraints.json_mode' cannot be combined with {given[0]}", param=source)
    method = policy.sampling.method
    if method == "standard" and (given or c.json_mode):
        raise InvalidRequest(
            f"'{source}.sampling.method' is 'standard' but constraints are set; constraints are "
            f"enforced by method '{GUIDED}'", param=source)
    options: dict[str, Any] = {"repair_on_failure": policy.verifiers.repair_on_failure}
    if policy.verifiers.enabled is not None:
        options["verifiers"] = list(policy.verifiers.enabled)
    if policy.verifiers.max_repair_tokens is not None:
        options["repair_budget"] = policy.verifiers.max_repair_tokens
    if policy_id:
        options["policy_id"] = policy_id
    if c.json_schema is not None:
        return Constraint(kind="json_schema", value=c.json_schema, source=source, options=options)
    if c.regex_pattern is not None:
        return Constraint(kind="regex", value=c.regex_pattern, source=source, options=options)
    if c.grammar is not None:
        return Constraint(kind="grammar", value=c.grammar, syntax=c.grammar_syntax,
                          source=source, options=options)
    if c.choices is not None:
        return Constraint(kind="choice", value=list(c.choices), source=source, options=options)
    if c.json_mode:
        return Constraint(kind="json_object", source=source, options=options)
    if method == GUIDED:
        raise InvalidRequest(
            f"'{source}.sampling.method' is '{GUIDED}' but no constraint is set (json_mode, "
            "json_schema, regex_pattern or grammar)", param=source)
    return None


def apply_policy(request: GenerationRequest, policy: Policy, source: str,
                 policy_id: str | None = None) -> None:
    s = policy.sampling
    if s.temperature is not None:
        request.temperature = s.temperature
    if s.top_p is not None:
        request.top_p = s.top_p
    if s.top_k is not None:
        request.top_k = s.top_k
    if s.seed is not None and request.seed is None:
        request.seed = s.seed
    for key in ("steering_vector_id", "steering_strength"):  # the request's own fields win
        if getattr(s, key) is not None and key not in request.extra:
            request.extra[key] = getattr(s, key)
    constraint = policy_constraint(policy, source, policy_id)
    if constraint is not None:
        request.constraints.append(constraint)


# --------------------------------------------------------------------------
# Saved policies
# --------------------------------------------------------------------------

_ID = re.compile(r"^pol_[A-Za-z0-9]{8,64}$")

_policies = sa.Table(
    "guided_policies", sa.MetaData(),
    sa.Column("id", sa.String(80), primary_key=True), sa.Column("owner", sa.Text),
    sa.Column("created", sa.BigInteger), sa.Column("policy", sa.Text))


class PolicyStore:
    """Saved policies in the kernel's database (table ``guided_policies``).
    A policy belongs to the principal that created it (by its opaque
    ``id``); others get 404 for it. Calls block: run them off the event loop.

    Earlier releases kept one JSON file per policy under
    ``<ADYTON_HOME>/policies``: ``open()`` imports those once (a policy
    already in the table is left as it is), then renames the directory to
    ``policies.imported`` so a policy deleted later does not come back."""

    def __init__(self, db: Database, legacy_dir: Path | None = None) -> None:
        self.db = db
        self.legacy_dir = legacy_dir
        self._opened = False
        self._lock = threading.Lock()

    def open(self) -> PolicyStore:
        with self._lock:
            if not self._opened:
                self.db.upgrade(VERSIONS, VERSION_TABLE)
                self._import_files()
                self._opened = True
        return self

    def _import_files(self) -> None:
        root = self.legacy_dir
        if root is None or not root.is_dir():
            return
        records = []
        for path in sorted(root.glob("pol_*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("adyton-guided: skipping unreadable saved policy %s: %s", path, exc)
                continue
            if isinstance(record, dict) and _ID.match(str(record.get("id", ""))) and record.get("owner"):
                records.append(record)
        with self.db.transaction() as conn:
            have = {r[0] for r in conn.execute(sa.select(_policies.c.id).where(
                _policies.c.id.in_([r["id"] for r in records])))} if records else set()
            for record in records:
                if record["id"] not in have:
                    conn.execute(_policies.insert().values(
                        id=record["id"], owner=str(record["owner"]), created=int(record.get("created", 0)),
                        policy=json.dumps(record.get("policy", {}), ensure_ascii=False)))
        target = root.with_name(root.name + ".imported")
        n = 0
        while target.exists():
            n += 1
            target = root.with_name(f"{root.name}.imported.{n}")
        os.replace(root, target)
        log.info("adyton-guided: imported %d saved policies from %s (the files are kept in %s)",
                 len(records), root, target)

    def create(self, policy: Policy, principal: Principal) -> dict[str, Any]:
        self.open()
        record = {
            "id": "pol_" + secrets.token_hex(12),
            "object": "policy",
            "created": int(time.time()),
            "owner": principal.id,
            "policy": policy.model_dump(exclude_none=True, exclude_defaults=False),
        }
        with self.db.transaction() as conn:
            conn.execute(_policies.insert().values(id=record["id"], owner=principal.id, created=record["created"],
                                                   policy=json.dumps(record["policy"], ensure_ascii=False)))
        return record

    @staticmethod
    def _record(row: Any) -> dict[str, Any]:
        return {"id": row[0], "object": "policy", "owner": row[1], "created": int(row[2]),
                "policy": json.loads(row[3])}

    def get(self, policy_id: str, principal: Principal) -> dict[str, Any]:
        self.open()
        row = None
        if _ID.match(policy_id):
            with self.db.connect() as conn:
                row = conn.execute(sa.select(_policies).where(_policies.c.id == policy_id,
                                                              _policies.c.owner == principal.id)).first()
        if row is None:
            raise NotFound(f"no policy '{policy_id}'", param="policy_id", code="policy_not_found")
        return self._record(row)

    def list_policies(self, principal: Principal) -> list[dict[str, Any]]:
        self.open()
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(_policies).where(_policies.c.owner == principal.id)
                                .order_by(_policies.c.created, _policies.c.id)).all()
        return [self._record(r) for r in rows]

    def delete(self, policy_id: str, principal: Principal) -> None:
        self.get(policy_id, principal)
        with self.db.transaction() as conn:
            conn.execute(_policies.delete().where(_policies.c.id == policy_id, _policies.c.owner == principal.id))


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored policy as clients see it (no owner)."""
    return {"id": record["id"], "policy_id": record["id"], "object": "policy",
            "created": record.get("created", 0), "policy": record.get("policy", {})}
