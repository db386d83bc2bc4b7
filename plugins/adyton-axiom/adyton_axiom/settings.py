"""The ``[axiom]`` settings section (``ADYTON_AXIOM__<KEY>`` in the environment).

Axiom requests carry no sampling parameters, so the operator chooses them
here for every request of this surface."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AxiomSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(
        2048, ge=1,
        description="Most tokens one Axiom reply may have (Axiom requests cannot say); "
                    "never more than the model's context leaves. None: as much as the context allows.",
    )
    temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="Sampling temperature for Axiom requests (0 = greedy).",
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling for Axiom requests.")
    time_budget_s: float | None = Field(
        45.0, gt=0,
        description="Seconds an Axiom request may take from admission to its last token (Axiom clients "
                    "give up after 60 s); then the reply ends with the text so far. None: no budget.",
    )
    stop_repetition: int | None = Field(
        4, ge=2,
        description="End a reply whose output ends in one n-gram repeated this many times (a "
                    "degenerate loop the model will not leave). None: off.",
    )
