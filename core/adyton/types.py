"""The types every plugin shares.

Request-level objects are pydantic models (validated once, at the edge).
Objects on the per-token hot path (``TokenPiece``, ``StepLogprob``, the
events a generation yields) are slotted dataclasses: they are created once per
token and must stay cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, InstanceOf, model_validator
from pydantic.json_schema import SkipJsonSchema
from werkzeug.datastructures import Headers


class FinishReason(str, enum.Enum):  # noqa: UP042 - a StrEnum's str() is its value: str(member) output would change
    """Why a generation ended."""

    STOP = "stop"  #: end-of-sequence token, a stop string, or a constraint completed
    LENGTH = "length"  #: max_tokens (or the context) ran out
    CANCELLED = "cancelled"  #: the client went away or the server shut down


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


class ToolCall(BaseModel):
    """A call of one tool (function) the model made, in an assistant turn."""

    model_config = ConfigDict(extra="forbid")

    #: the caller-visible id ("call_..."), echoed back by the tool's result
    id: str
    name: str
    #: the arguments as a JSON text (as the model wrote them)
    arguments: str = "{}"


class Tool(BaseModel):
    """A function the model may call (OpenAI ``tools[].function``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    #: a JSON schema for the arguments object
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatMessage(BaseModel):
    """One turn of a chat. Content is plain text (wire formats flatten parts).

    An assistant turn that called tools has ``tool_calls`` (its content may be
    empty); a ``tool`` turn carries one call's result, with ``tool_call_id``
    naming the call and ``name`` the tool."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    #: the tool's name on a ``tool`` turn (or a participant's name)
    name: str | None = None


class Constraint(BaseModel):
    """A per-request restriction on what may be generated.

    Wire formats turn their own fields (OpenAI ``response_format``, an
    Axionic ``policy`` ...) into constraints; sampler plugins claim the ones
    they can enforce. A constraint nobody claims makes the request fail with
    400 before it is queued: constraints are never silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["json_schema", "json_object", "regex", "grammar", "choice", "tool_calls"]
    #: the schema (dict) for json_schema, the pattern for regex, the grammar
    #: text for grammar, the list of strings for choice, None for json_object;
    #: for tool_calls: ``{"tools": [Tool dicts], "parallel": bool}`` (the
    #: output is one or more calls in the kernel's tool-call convention,
    #: ``adyton.tools``, of these tools, the arguments valid for their schema)
    value: Any = None
    #: grammar syntax when kind == "grammar": "lark" or "gbnf"
    syntax: Literal["lark", "gbnf"] | None = None
    #: where it came from, for error messages: "response_format", "policy" ...
    source: str = "request"
    #: extra knobs for the enforcing plugin (verifiers, repair budget ...)
    options: dict[str, Any] = Field(default_factory=dict)


class GenerationRequest(BaseModel):
    """A wire-neutral request to generate text.

    Exactly one of ``messages`` (a chat, rendered by the backend with the
    model's own template) or ``prompt`` (raw text) is set.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    #: a model id or alias; None means "the model currently loaded"
    model: str | None = None
    #: None means "as much as the context allows"
    max_tokens: int | None = Field(default=None, ge=1)
    #: True: a ``max_tokens`` beyond what the context leaves after the prompt
    #: is lowered to fit instead of refused with a 400 (for a cap the client
    #: did not choose, such as a server-side reply limit)
    fit_context: bool = False
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  #: 0 = disabled
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    #: number of independent completions of the same prompt
    n: int = Field(default=1, ge=1, le=16)
    #: token id -> bias added to its logit (-100 bans, +100 forces)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    #: None = no logprobs; k >= 0 = logprob of each chosen token plus the top k
    logprobs: int | None = Field(default=None, ge=0, le=20)
    constraints: list[Constraint] = Field(default_factory=list)
    #: divides positive logits (multiplies negative ones) of tokens already
    #: generated; 1.0 = off (HF/vLLM ``repetition_penalty``)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    #: end-of-sequence is banned until this many tokens are generated
    min_tokens: int = Field(default=0, ge=0)
    #: functions the model may call (rendered by the chat template, or by the
    #: kernel's tool-call convention; see ``adyton.tools``)
    tools: list[Tool] = Field(default_factory=list)
    #: "auto": text or calls; "none": no calls (the tools are not shown);
    #: "required": at least one call (``tool_name``: of that tool)
    tool_choice: Literal["none", "auto", "required"] = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    #: extra variables for the chat template (HF ``chat_template_kwargs``)
    template_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: seconds this request may take from admission (queue wait included) to
    #: its last token; once spent, each choice ends after its current token
    #: with finish_reason "length" and the text produced so far. Set by wire
    #: formats from their settings (e.g. ``axiom.time_budget_s``); None = none
    time_budget_s: float | None = Field(default=None, gt=0)
    #: end a choice (finish_reason "length") once its output ends in one
    #: n-gram of up to ``REPETITION_MAX_PERIOD`` tokens repeated this many
    #: times, spanning at least ``REPETITION_MIN_SPAN`` tokens: a degenerate
    #: loop. Wire formats set it only where the caller asked for nothing that
    #: shapes the output (no stop strings, penalties or constraints); None = off
    stop_repetition: int | None = Field(default=None, ge=2)
    #: the caller's own label for the end user (OpenAI ``user``), for logs
    user: str | None = None
    #: extension parameters for plugins (e.g. an Axionic "policy"); a plugin
    #: that handles one pops it in ``prepare_request``; leftovers are a 400
    extra: dict[str, Any] = Field(default_factory=dict)
    #: add a vector to the model's hidden states while generating (set by a
    #: plugin in ``prepare_request``, never from JSON); a backend that cannot
    #: steer ``model`` makes the kernel refuse the request with 400
    steering: SkipJsonSchema[InstanceOf[Steering] | None] = Field(default=None, exclude=True)
    #: read the hidden states of each generated token (set by a plugin, never
    #: from JSON); refused with 400 like ``steering`` on a backend that cannot
    observer: SkipJsonSchema[InstanceOf[HiddenStateObserver] | None] = Field(default=None, exclude=True)

    def shapes_output(self) -> bool:
        """True when the caller asked for something that shapes the output
        (stop strings, penalties, logit bias, constraints, tools, a minimum
        length): then a repetition stop must not second-guess it."""
        return bool(self.stop or self.presence_penalty or self.frequency_penalty or self.logit_bias
                    or self.constraints or self.tools or self.min_tokens
                    or self.repetition_penalty != 1.0)

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of 'messages' or 'prompt' is required")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if self.tool_name is not None and self.tool_name not in {t.name for t in self.tools}:
            raise ValueError(f"tool_name {self.tool_name!r} is not one of the tools")
        if self.tool_name is not None and self.tool_choice != "required":
            raise ValueError("tool_name needs tool_choice 'required'")
        if self.tools and self.prompt is not None:
            raise ValueError("tools need 'messages' (a chat)")
        return self


class HeaderLookup(Protocol):
    """What ``Credentials.from_headers`` reads: a case-insensitive ``get`` by
    name, as Quart's and werkzeug's ``Headers`` have (a plain dict works when
    its keys are spelled as asked)."""

    def get(self, key: str, /) -> str | None: ...


class Credentials(BaseModel):
    """What the caller presented, as the wire format found it.

    ``kind`` says where it came from: "bearer" (Authorization: Bearer),
    "api_key" (x-api-key), "account_number" (Axiom sessionId), or "none".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bearer", "api_key", "account_number", "none"] = "none"
    secret: str = Field(default="", repr=False)
    #: the wire format's name, e.g. "openai", "axiom"
    wire_format: str = ""
    client_address: str | None = None

    @classmethod
    def from_headers(cls, headers: HeaderLookup, *, wire_format: str,
                     client_address: str | None = None) -> Credentials:
        """The usual API-key headers (``headers``: a case-insensitive mapping
        such as Quart's ``request.headers``): ``x-api-key: KEY`` gives
        "api_key", else ``Authorization: Bearer KEY`` gives "bearer", else
        "none" (also for an Authorization header of another scheme: a wire
        format that calls that malformed checks for it when this gives
        "none"). x-api-key wins because SDKs always send a Bearer header,
        often with a dummy key, while x-api-key is only ever sent on purpose."""
        api_key, authorization = _credential_headers(headers)
        key = (api_key or "").strip()
        if key:
            return cls(kind="api_key", secret=key, wire_format=wire_format, client_address=client_address)
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return cls(kind="bearer", secret=token.strip(), wire_format=wire_format,
                       client_address=client_address)
        return cls(kind="none", wire_format=wire_format, client_address=client_address)


def _credential_headers(headers: HeaderLookup) -> tuple[str | None, str | None]:
    """``x-api-key`` and ``Authorization`` (the first of each). Werkzeug's
    ``Headers`` (Quart's ``request.headers``) are read in one pass: its
    ``get`` scans every header and raises and catches an exception for a
    missing one, which is most requests' x-api-key and, without auth, their
    Authorization too."""
    if isinstance(headers, Headers):
        api_key = authorization = None
        for name, value in headers:
            lower = name.lower()
            if lower == "x-api-key":
                if api_key is None:
                    api_key = value
            elif lower == "authorization" and authorization is None:
                authorization = value
        return api_key, authorization
    return headers.get("x-api-key"), headers.get("Authorization")


class Principal(BaseModel):
    """Who is calling, as established by an authenticator.

    The kernel treats ``id`` as opaque; limits plugins key their counters on
    it. ``anonymous`` is what requests get when no auth plugin is installed.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    display_name: str = ""
    tier: str | None = None
    anonymous: bool = False
    attributes: dict[str, Any] = Field(default_factory=dict)


ANONYMOUS = Principal(id="anonymous", display_name="anonymous", anonymous=True)


class ModelInfo(BaseModel):
    """A model a backend can serve."""

    id: str
    backend: str = ""
    #: Axione-style namespace ("provider/model"); "adyton" for local files
    owned_by: str = "adyton"
    created: int = 0
    context_length: int | None = None
    size_bytes: int | None = None
    quantization: str | None = None
    path: str | None = None
    loaded: bool = False
    aliases: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class RequestCost:
    """What a request may cost at most, known before it is queued."""

    model: str
    prompt_tokens: int
    max_completion_tokens: int
    wire_format: str = ""

    @property
    def max_total_tokens(self) -> int:
        return self.prompt_tokens + self.max_completion_tokens


@dataclass(slots=True)
class Reservation:
    """What a limiter holds for one request between reserve and settle.

    ``headers`` are rendered by the wire format on the response (success or
    error), e.g. ``x-ratelimit-remaining-requests``. ``data`` is the
    limiter's own bookkeeping."""

    principal: Principal
    cost: RequestCost
    headers: dict[str, str] = field(default_factory=dict)
    data: Any = None


class EmbeddingRequest(BaseModel):
    """A wire-neutral request for embeddings: one vector per input.

    ``inputs`` are texts (tokenized by the model's backend) or token arrays
    (ids of the model's own tokenizer). Served by backends that declare the
    ability (``Backend.embedding_dimensions``) through
    ``kernel.embed``."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] | list[list[int]] = Field(min_length=1)
    #: a model id or alias; None means "the model currently loaded"
    model: str | None = None
    #: the vector size the caller asked for; None: the model's own (a size the
    #: model does not produce is refused with 400, never truncated silently)
    dimensions: int | None = Field(default=None, ge=1)
    #: seconds this request may take from admission (queue wait included) to
    #: its last token; once spent, each choice ends after its current token
    #: with finish_reason "length" and the text produced so far. Set by wire
    #: formats from their settings (e.g. ``axiom.time_budget_s``); None = none
    time_budget_s: float | None = Field(default=None, gt=0)
    #: end a choice (finish_reason "length") once its output ends in one
    #: n-gram of up to ``REPETITION_MAX_PERIOD`` tokens repeated this many
    #: times, spanning at least ``REPETITION_MIN_SPAN`` tokens: a degenerate
    #: loop. Wire formats set it only where the caller asked for nothing that
    #: shapes the output (no stop strings, penalties or constraints); None = off
    stop_repetition: int | None = Field(default=None, ge=2)
    #: the caller's own label for the end user (OpenAI ``user``), for logs
    user: str | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> EmbeddingRequest:
        for i, item in enumerate(self.inputs):
            if len(item) == 0:
                raise ValueError(f"input {i} is empty")
        return self


# --------------------------------------------------------------------------
# What a backend prepares and yields
# --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Steering:
    """Activation steering of one generation: at each layer ``l`` of
    ``vectors``, ``strength * vectors[l]`` is added to the hidden state (the
    residual stream at the output of layer ``l``, 0-based) of every position,
    prompt included. ``model`` is the model id the vectors were made for: the
    kernel refuses them for another model. Strength 0 is no steering."""

    model: str
    #: layer -> float32 numpy vector of the model's hidden size
    vectors: dict[int, Any]
    strength: float = 1.0
    #: the request field it came from, for error messages
    source: str = "steering"


@dataclass(slots=True, eq=False)
class HiddenStateObserver:
    """Reads the hidden states of a generation, token by token: the backend
    calls ``callback(token_index, token_id, {layer: float32 vector})`` on the engine
    thread for each generated token (index 0 = the first), with the hidden
    state at the output of each of ``layers`` (0-based) at the position whose
    logits chose that token (so token 0 is observed at the prompt's last
    position). Called before the token's piece is yielded; keep it quick.
    With ``n > 1`` each choice calls it in turn, its index starting at 0."""

    layers: tuple[int, ...]
    callback: Callable[[int, int, dict[int, Any]], None]


@dataclass(slots=True)
class PreparedPrompt:
    """A request turned into tokens by its backend, before it is queued.

    ``context_length`` lets the kernel refuse prompt + max_tokens overflow
    with a clear 400 before the request costs anything.
    """

    model: ModelInfo
    token_ids: list[int]
    text: str
    context_length: int
    #: the request's ``steering`` / ``observer``, set by the kernel after
    #: ``Backend.prepare`` once the backend declared it can honour them
    steering: Steering | None = None
    observer: HiddenStateObserver | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class TokenPiece:
    """One step of a backend's generation.

    ``text`` is the newly complete text this token adds (it may be "" while a
    multi-byte character is still incomplete). A piece with a
    ``finish_reason`` is the last; an end-of-sequence token is reported as a
    piece with ``finish_reason=STOP`` and ``text=""``.
    """

    token_id: int
    text: str
    finish_reason: FinishReason | None = None
    #: self-sampling backends only (``Backend.exposes_logits = False``): the
    #: logprobs the engine computed for the tokens behind this piece (when the
    #: request asked for ``logprobs``)
    logprobs: list[TokenLogprob] | None = None
    #: self-sampling backends only: the engine's own count for this choice
    #: (its prompt and completion tokens), usually on the last piece. The
    #: kernel then settles with it instead of its own count of pieces and the
    #: backend's prompt estimate
    usage: Usage | None = None
    #: self-sampling backends only: reports about this choice for the wire
    #: format, merged into ``Choice.reports`` like ``LogitsProcessor.report``'s
    #: (verified guided output: key "guided", the shape adyton-guided reports)
    reports: dict[str, Any] | None = None


@dataclass(slots=True)
class SamplingParams:
    """What a self-sampling backend (``Backend.exposes_logits = False``)
    receives as ``step`` in ``Backend.generate``, once per choice: the
    admitted request (after ``prepare_request`` hooks and
    ``Backend.check_sampling``) and this choice's seed. Such a backend
    samples itself with the request's parameters (temperature, top_p,
    stop, logit_bias, logprobs, constraints ...); calling it like a step
    function is a bug and raises ``TypeError``."""

    request: GenerationRequest
    #: choice ``index``'s seed: ``request.seed + index`` (None: unseeded)
    seed: int | None = None
    index: int = 0

    def __call__(self, logits: Any) -> int:
        raise TypeError("a self-sampling backend (exposes_logits = False) has no logits to hand: "
                        "read the request from SamplingParams instead of calling it")


@dataclass(slots=True)
class Vocabulary:
    """What a backend tells samplers about its tokenizer.

    Guided decoding needs the bytes of every token and the backend's real
    encoder (a naive byte-wise encoder gives wrong masks).
    """

    #: token id -> the bytes it stands for (control tokens: their literal text)
    token_bytes: list[bytes]
    #: end-of-sequence ids (the first is the canonical one)
    eos_token_ids: list[int]
    #: control/special token ids (never produced by a constraint)
    control_token_ids: frozenset[int]
    #: the backend's tokenizer, no special-token parsing
    encode: Callable[[str], list[int]]

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def token_text(self, token_id: int) -> str:
        return self.token_bytes[token_id].decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# What a generation yields to wire formats
# --------------------------------------------------------------------------


@dataclass(slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class TextDelta:
    """New text for choice ``index``; ``logprobs`` covers the tokens behind it."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class ChoiceFinished:
    index: int
    finish_reason: FinishReason
    completion_tokens: int
    #: reports from logits processors (e.g. guided decoding's verifier)
    reports: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Waiting:
    """Nothing new yet: the request waits in the queue or its prompt is being
    read. Streaming wire formats send a keep-alive comment."""

    position: int | None = None


@dataclass(slots=True)
class Started:
    """The request got the engine and generation began."""

    model: str


GenerationEvent = TextDelta | ChoiceFinished | Waiting | Started


@dataclass(slots=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None
    reports: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class GenerationResult:
    """A finished non-streaming generation."""

    id: str
    model: str
    created: int
    choices: list[Choice]
    usage: Usage
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResult:
    """What ``kernel.embed`` returns: one float32 vector per input,
    in input order, with the usage (``prompt_tokens`` = the input tokens)."""

    id: str
    model: str
    created: int
    #: numpy float32 vectors of ``dimensions`` values each
    vectors: list[Any]
    dimensions: int
    usage: Usage
    headers: dict[str, str] = field(default_factory=dict)


GenerationRequest.model_rebuild()


__all__ = [
    "ANONYMOUS",
    "ChatMessage",
    "Choice",
    "ChoiceFinished",
    "Constraint",
    "Credentials",
    "EmbeddingRequest",
    "EmbeddingResult",
    "FinishReason",
    "GenerationEvent",
    "GenerationRequest",
    "GenerationResult",
    "HiddenStateObserver",
    "ModelInfo",
    "PreparedPrompt",
    "Principal",
    "RequestCost",
    "Reservation",
    "SamplingParams",
    "Started",
    "Steering",
    "TextDelta",
    "TokenLogprob",
    "TokenPiece",
    "Tool",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "Vocabulary",
    "Waiting",
]
