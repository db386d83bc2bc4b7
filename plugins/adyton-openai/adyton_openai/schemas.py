"""Request bodies of the OpenAI surface, as pydantic models.

They are validated strictly (a string is not a number, 1 is not a boolean),
as OpenAI itself does, and they are what ``/openapi.json`` documents, so a
fuzzer driven by that document explores exactly what the server accepts.
Response models are for the document only: responses are built from plain
dicts (cheap on the streaming hot path).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Sampling temperature; 0 = greedy.")]
TopP = Annotated[float, Field(ge=0.0, le=1.0, description="Nucleus sampling mass (0 = greedy).")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX,
                            description="Same seed, same request, same model: same output.")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0,
                                           description="HF/vLLM: >1 discourages tokens already generated.")]
MinTokens = Annotated[int, Field(ge=0, description="vLLM: end-of-sequence is banned until this many tokens.")]
StopField = Annotated[
    str | Annotated[list[str], Field(max_length=16)] | None,
    Field(description="Up to 16 strings; generation stops before the first one found."),
]
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None,
    Field(description='Token id (as a string) -> bias added to its logit, e.g. {"50256": -100}.'),
]


class TextPart(BaseModel):
    """A content part. Only ``{"type": "text", "text": ...}`` is supported."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str
    #: a JSON text (OpenAI's shape); an object is accepted too
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(BaseModel):
    """A call in an assistant message of the history (what the response
    gave; echoed fields such as ``index`` are tolerated)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # response-message fields clients echo back (model_dump()): ignored;
    # a non-empty one is listed in x-adyton-ignored-params
    refusal: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    annotations: list[Any] | None = None
    reasoning_content: str | None = None
    #: what the SDKs' parse() helpers add to a message (the parsed object)
    parsed: Any = None


class FunctionIn(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    #: calls are always schema-valid when guided decoding constrains them
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = _STRICT

    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    model_config = _STRICT

    name: str


class NamedToolChoice(BaseModel):
    model_config = _STRICT

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class JSONSchemaFormat(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class _Common(BaseModel):
    """Fields shared by chat and legacy completions."""

    model_config = _STRICT

    model: str | None = Field(None,
                              description="A model id or alias from /v1/models; omitted or empty: the loaded model.")
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    stop: StopField = None
    seed: Seed | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: LogitBias = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    # widely used extensions (vLLM, llama.cpp), honoured by the kernel's sampler
    top_k: Annotated[int, Field(ge=-1, description="0 or -1 (vLLM): off.")] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: MinTokens | None = None
    # vLLM / llama.cpp guided decoding (needs adyton-guided)
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM: a JSON schema the output must match.")
    guided_regex: str | None = Field(None, description="vLLM: a regex the output must match.")
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="vLLM: the output is one of these strings.")
    guided_grammar: str | None = Field(None, description="vLLM: a grammar (Lark or GBNF) the output must match.")
    grammar: str | None = Field(None, description="llama.cpp: a GBNF grammar the output must match.")
    json_schema: dict[str, Any] | None = Field(None, description="llama.cpp: a JSON schema the output must match.")
    # Axionic guided generation (handed to plugins via GenerationRequest.extra)
    policy: dict[str, Any] | None = Field(None, description="Axionic inline inference policy (needs adyton-guided).")
    policy_id: str | None = Field(None, description="Axionic saved policy id (needs adyton-guided).")
    # Axionic steering vectors (handed to plugins via GenerationRequest.extra; adyton-steer)
    steering_vector_id: str | None = Field(None, description="Axionic steering vector id (needs adyton-steer).")
    steering_strength: float | None = Field(None, description="Axionic steering strength (needs adyton-steer).")
    # accepted, not honoured: listed in x-adyton-ignored-params (400 with openai.strict)
    service_tier: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions"""

    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Extra variables for the model's chat template (vLLM).")
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


class CompletionRequest(_Common):
    """POST /v1/completions (legacy)"""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=16)]
    suffix: str | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None


class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings"""

    model_config = _STRICT

    # counts and ids are checked after validation (embeddings.kernel_request):
    # pydantic would report a too-long list of texts against the wrong union member
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, a token array or a list of token arrays (up to 2048 inputs).")
    model: str | None = Field(None, description="A model id or alias; omitted or empty: the loaded model.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="'float' (default): arrays of numbers; 'base64': little-endian float32 bytes.")
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Only the model's own size is accepted: vectors are never shortened.")
    user: str | None = None


class ResponseTextFormat(BaseModel):
    model_config = _STRICT

    type: Literal["text", "json_schema", "json_object"]
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseText(BaseModel):
    model_config = _STRICT

    format: ResponseTextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    """POST /v1/responses"""

    model_config = _STRICT

    model: str | None = Field(None, description="A model id or alias; omitted or empty: the loaded model.")
    input: str | list[dict[str, Any]] | None = Field(
        None, description="A text (one user message) or a list of input items: messages, "
        "function_call and function_call_output items.")
    instructions: str | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    text: ResponseText | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stream_options: dict[str, Any] | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    service_tier: str | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    seed: Seed | None = None


# --------------------------------------------------------------------------
# Responses (documentation only)
# --------------------------------------------------------------------------


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobsOut(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoiceOut(BaseModel):
    index: int
    message: AssistantMessageOut
    logprobs: ChoiceLogprobsOut | None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletionOut(BaseModel):
    """A chat completion; with ``stream: true``, server-sent events of
    ``chat.completion.chunk`` objects ending with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoiceOut]
    usage: UsageOut


class LegacyLogprobsOut(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoiceOut(BaseModel):
    index: int
    text: str
    logprobs: LegacyLogprobsOut | None
    finish_reason: Literal["stop", "length"]


class CompletionOut(BaseModel):
    """A text completion; with ``stream: true``, server-sent events of
    ``text_completion`` objects ending with ``data: [DONE]``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoiceOut]
    usage: UsageOut


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelListOut(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    error: ErrorBody


#: every field name of the request models (to tell them from pydantic's
#: union-member labels in error locations)
FIELD_NAMES: frozenset[str] = frozenset(
    name
    for model in (ChatCompletionRequest, CompletionRequest, ChatMessageIn, TextPart, StreamOptions,
                  JSONSchemaFormat, ResponseFormat, ToolCallIn, FunctionCallIn, ToolIn, FunctionIn,
                  NamedToolChoice, NamedFunction, EmbeddingsRequest, ResponsesRequest, ResponseText,
                  ResponseTextFormat)
    for field_name, info in model.model_fields.items()
    for name in (field_name, info.alias)
    if name
)
