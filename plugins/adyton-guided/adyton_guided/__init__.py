"""adyton-guided: guided decoding with llguidance.

Enforces JSON schemas, any-JSON-object, regexes, grammars (Lark, and
llama.cpp GBNF converted to Lark) and choices among strings; refuses (400,
before anything is queued or counted) what it cannot enforce; reports
verifier results; repairs outputs cut short by ``max_tokens`` when asked.
Also serves Axionic's saved policies (``/v1/policies``) and
``POST /sampling/generate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from adyton import (
    Constraint,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    Principal,
    UnsupportedConstraint,
    Vocabulary,
    hookimpl,
)

from .compile import Compiler
from .policy import PolicyStore, apply_policy, parse_policy
from .processor import GuidedProcessor
from .tokenizer import TokenizerCache
from .verify import VERIFIERS, default_verifiers

if TYPE_CHECKING:  # pragma: no cover
    from adyton import Kernel

__all__ = ["GuidedProcessor", "GuidedSettings", "compiler", "tokenizers"]

#: content-addressed caches, shared by every app in the process
compiler = Compiler()
tokenizers = TokenizerCache()

class GuidedSettings(BaseModel):
    repair_budget: int = Field(64, ge=1, le=4096,
                               description="Tokens repair_on_failure may add past max_tokens to complete a "
                                           "constrained output.")
    prefetch_masks: bool = Field(False,
                                 description="Compute the next token mask on a helper thread while the engine runs "
                                             "its forward pass (off: a mask takes ~0.05 ms of a ~12 ms token on the "
                                             "default model, and the helper thread competes with an engine using "
                                             "every core).")
    compile_cache_size: int = Field(256, ge=1, description="Compiled constraints kept per process (by content hash).")
    declared_keys_only: bool = Field(True,
                                     description="A JSON schema object that lists 'properties' and does not say "
                                                 "'additionalProperties' gets no other keys (what structured-output "
                                                 "users expect; xgrammar and llama.cpp do the same). False: the JSON"
                                                 " Schema reading, any extra key allowed.")
    auto_tool_calls: bool = Field(True,
                                  description="With tools and tool_choice 'auto' (and no other constraint), "
                                              "constrain a tool call once the model starts one (<tool_call>), so "
                                              "every call it makes is valid; the text before it stays free.")


def _settings(kernel: Kernel) -> GuidedSettings:
    return kernel.section("guided", GuidedSettings)


def policy_store(kernel: Kernel) -> PolicyStore:
    # the kernel's database (files of earlier releases are imported once)
    return kernel.state(PolicyStore, lambda: PolicyStore(kernel.database, legacy_dir=kernel.home / "policies"))


# --------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------


@hookimpl
def register_settings(register):
    register("guided", GuidedSettings)


@hookimpl
def register_migrations(register, kernel):
    from .migrations import VERSION_TABLE, VERSIONS

    register(VERSIONS, VERSION_TABLE)  # saved policies: a table in the kernel's database


@hookimpl
def register_wire_formats(register, kernel):
    from .wire import AxionicGuided

    register(AxionicGuided())


@hookimpl
def prepare_request(request: GenerationRequest, principal: Principal, kernel: Kernel) -> Awaitable[None] | None:
    extra = request.extra
    if "policy" not in extra and "policy_id" not in extra:
        return None
    policy_raw = extra.pop("policy", None)
    policy_id = extra.pop("policy_id", None)
    if policy_raw is not None and policy_id is not None:
        raise InvalidRequest("send either 'policy' or 'policy_id', not both", param="policy_id")
    if policy_id is not None:
        if not isinstance(policy_id, str):
            raise InvalidRequest("'policy_id' must be a string", param="policy_id")
        return _apply_saved(request, principal, kernel, policy_id)
    if policy_raw is not None:
        apply_policy(request, parse_policy(policy_raw), source="policy")
    return None


async def _apply_saved(request: GenerationRequest, principal: Principal, kernel: Kernel, policy_id: str) -> None:
    # a database read: off the event loop
    record = await kernel.offload(policy_store(kernel).get, policy_id, principal)
    policy = parse_policy(record.get("policy", {}), param="policy_id")
    apply_policy(request, policy, source="policy_id", policy_id=policy_id)


def _options(constraint, settings: GuidedSettings) -> tuple[list[str], bool, int]:
    options = constraint.options or {}
    verifiers = options.get("verifiers")
    if verifiers is None:
        verifiers = default_verifiers(constraint.kind)
    if not isinstance(verifiers, list) or any(v not in VERIFIERS for v in verifiers):
        raise UnsupportedConstraint(
            f"unknown verifier in {verifiers!r} from '{constraint.source}' "
            f"(supported: {', '.join(VERIFIERS)})", param=constraint.source)
    repair = bool(options.get("repair_on_failure", False))
    budget = options.get("repair_budget", settings.repair_budget)
    if not isinstance(budget, int) or isinstance(budget, bool) or not 1 <= budget <= 4096:
        raise UnsupportedConstraint(
            f"repair_budget from '{constraint.source}' must be an integer in 1..4096",
            param=constraint.source)
    return list(verifiers), repair, budget


def _lazy_tool_calls(request: GenerationRequest) -> Constraint | None:
    """tool_choice "auto": free text, then (if the model writes
    ``<tool_call>``) valid calls only. Not a request constraint: without this
    plugin the calls are still parsed, just not guaranteed."""
    if not request.tools or request.tool_choice != "auto" or request.constraints:
        return None
    return Constraint(
        kind="tool_calls", source="tools",
        value={"tools": [t.model_dump(exclude_none=True) for t in request.tools],
               "parallel": request.parallel_tool_calls, "lazy": True},
        options={"verifiers": []},
    )


@hookimpl
def logits_processors(request: GenerationRequest, model: ModelInfo, vocabulary: Vocabulary | None, kernel: Kernel):
    mine = list(request.constraints)
    settings = _settings(kernel)
    lazy = _lazy_tool_calls(request) if settings.auto_tool_calls else None
    if lazy is not None:
        if vocabulary is None:
            return None  # calls are parsed unconstrained
        mine = [lazy]
    if not mine:
        return None
    if len(mine) > 1:
        sources = ", ".join(f"{c.kind} from '{c.source}'" for c in mine)
        raise UnsupportedConstraint(
            f"one constraint per request is supported; this request has {len(mine)} ({sources})",
            param=mine[1].source)
    constraint = mine[0]
    verifiers, repair, budget = _options(constraint, settings)
    declared = settings.declared_keys_only
    if vocabulary is None:
        # still name a broken constraint precisely before saying why we can't
        compiler.grammar(constraint, declared)
        raise UnsupportedConstraint(
            f"model '{model.id}' does not describe its vocabulary, so the {constraint.kind} "
            f"constraint from '{constraint.source}' cannot be enforced", param=constraint.source)
    compiler.max_entries = settings.compile_cache_size

    def build() -> GuidedProcessor:
        tok = tokenizers.get(vocabulary)
        compiled = compiler.matcher(constraint, tok, declared)
        return GuidedProcessor(
            constraint, compiled, tok,
            max_tokens=request.max_tokens, verifiers=verifiers, repair=repair,
            repair_budget=budget, prefetch=settings.prefetch_masks,
            quiet=constraint is lazy,
        )

    tok = tokenizers.cached(vocabulary)
    if tok is not None and compiler.is_cached(constraint, tok, declared):
        return build()  # all cached: microseconds, stay on the loop
    return asyncio.to_thread(build)  # tokenizer build / compile: off the loop
