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
