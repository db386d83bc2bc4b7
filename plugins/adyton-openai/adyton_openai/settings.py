"""The ``[openai]`` settings section (``ADYTON_OPENAI__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strict: bool = Field(
        False,
        description="Refuse (400) parameters the server accepts but does not honour, instead of "
        "listing them in the x-adyton-ignored-params response header.",
    )
    namespaced_ids: bool = Field(
        False,
        description='List models in /v1/models as "owned_by/id" (Axione style). Both forms are '
        "accepted in requests either way.",
    )
    owned_by: str | None = Field(
        None, description="Report this owned_by for every model (None: what the backend says)."
    )
    list_aliases: bool = Field(
        True, description="List model aliases as extra entries in /v1/models."
    )
    ping: bool = Field(
        True,
        description="Streaming: send ': ping' SSE comments while a request waits or reads a long prompt.",
    )
    time_budget_s: float | None = Field(
        None, gt=0,
        description="Seconds a request may take from admission to its last token; then each choice "
        'ends with finish_reason "length" and the text so far. None: no budget (max_tokens only).',
    )
    stop_repetition: int | None = Field(
        None, ge=2,
        description="End a choice (finish_reason \"length\") whose output ends in one n-gram repeated "
        "this many times (a degenerate loop), when the request sets no stop strings, penalties, "
        "logit_bias or constraints. None: off.",
    )
    responses_max_stored: int = Field(
        1024, ge=1,
        description="POST /v1/responses: stored responses kept per account (least recently used out "
        "first), in the database every server shares.",
    )
    responses_max_chars: int = Field(
        32 * 2**20, ge=1,
        description="POST /v1/responses: characters (JSON of turns and response) one account's stored "
        "responses may hold together; a bigger response is not kept.",
    )
    responses_ttl_days: float | None = Field(
        30, gt=0,
        description="POST /v1/responses: days a stored response is kept (OpenAI keeps them 30). "
        "None: until evicted or deleted.",
    )
    extra_params: list[str] = Field(
        default_factory=list,
        description="Extra top-level request fields passed to plugins (GenerationRequest.extra) "
        "besides Axionic 'policy' and 'policy_id'; a plugin must handle them or the request is refused.",
    )
