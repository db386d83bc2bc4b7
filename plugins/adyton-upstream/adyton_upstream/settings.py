"""The ``[upstream]`` settings section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ReplicaSettings(BaseModel):
    """One engine serving a model: its base URL and, optionally, its own key."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Base URL of an OpenAI-compatible server, e.g. http://10.0.0.5:8000 "
                                 "(the /v1 routes live under it; a trailing /v1 is accepted).")
    api_key: str | None = Field(None, description="Bearer key for this replica (default: the model's).")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"replica url {url!r} must start with http:// or https://")
        return url[:-3] if url.endswith("/v1") else url


class UpstreamModel(BaseModel):
    """One model served by remote engines (``[upstream.models.<id>]``)."""

    model_config = ConfigDict(extra="forbid")

    replicas: list[ReplicaSettings] = Field(min_length=1, description="The engines serving this model; "
                                            "a plain URL string is accepted for each.")
    api_key: str | None = Field(None, description="Bearer key sent to every replica without its own.")
    upstream_model: str | None = Field(None, description="The model name sent upstream (default: the id).")
    dialect: Literal["openai", "vllm", "llamacpp", "llama-cpp-python"] = Field(
        "openai", description="Which extensions the engines take: 'vllm' (top_k, min_p, repetition_penalty, "
        "min_tokens, guided_regex, guided_choice), 'llamacpp' (llama.cpp's llama-server: top_k, min_p, "
        "repeat_penalty; JSON schemas in llama.cpp's form), 'llama-cpp-python' (its server: the same and "
        "min_tokens, no chat_template_kwargs), "
        "'openai' (the OpenAI parameters only).")
    logprobs: bool = Field(True, description="The engines return logprobs (logprobs / top_logprobs).")
    logit_bias: bool = Field(True, description="The engines honour logit_bias. Token ids a client sends "
                             "are the upstream model's own (adyton has no tokenizer of its own for it); "
                             "set false for an engine that ignores logit_bias: it is then refused.")
    json_schema: bool = Field(True, description="The engines take response_format json_schema / json_object "
                              "(structured outputs). The output is verified here either way.")
    owned_by: str = Field("upstream", description="The namespace shown in /v1/models.")
    aliases: list[str] = Field(default_factory=list, description="Other names for this model.")

    @field_validator("replicas", mode="before")
    @classmethod
    def _urls(cls, value):
        if isinstance(value, list):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value


class UpstreamSettings(BaseModel):
    """The ``[upstream]`` settings section."""

    models: dict[str, UpstreamModel] = Field(default_factory=dict, description=(
        "Models served by remote OpenAI-compatible engines, by id: "
        "{id: {replicas: [url, ...], api_key, upstream_model, dialect, logprobs, logit_bias, json_schema}}."))
    connect_timeout_s: float = Field(3.0, gt=0, description="Seconds to connect to a replica.")
    read_timeout_s: float = Field(60.0, gt=0, description=(
        "Seconds of silence allowed from a replica: until its answer and first token (it may queue the "
        "request; SSE keep-alive comments count) and between two chunks. Past it, a request without a "
        "token yet is tried on another replica, else it ends with 504."))
    max_attempts: int = Field(3, ge=1, description=(
        "Replicas tried for one request that fails before its first token (each at most once)."))
    health_interval_s: float = Field(10.0, gt=0, description="Seconds between health checks of each replica.")
    health_path: str = Field("/v1/models", description="GET path of the health check (e.g. /health).")
    backoff_s: float = Field(1.0, gt=0, description=(
        "A replica that fails is taken out for this long, doubled at each further failure."))
    max_backoff_s: float = Field(60.0, gt=0, description="The longest a failed replica stays out.")
    max_concurrency: int = Field(64, ge=1, description=(
        "Requests in flight to the engines at once (each holds an engine thread and a connection); "
        "more wait in adyton's queue."))
    default_max_tokens: int = Field(4096, ge=1, description=(
        "What a request that names no max_tokens reserves against limits, and the most it may "
        "generate here."))
