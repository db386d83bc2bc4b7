"""The OpenAI wire format: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from quart import Blueprint, Quart, Response, jsonify, request
from quart_schema import QuartSchema, document_request, document_response
from quart_schema.openapi import OpenAPIProvider

from adyton import (
    DEFAULT_ERROR_SCHEMA,
    AdytonError,
    BackendError,
    ChoiceFinished,
    Credentials,
    Generation,
    GenerationResult,
    InvalidRequest,
    Kernel,
    TextDelta,
    Unauthorized,
    Waiting,
    WireFormat,
    current_kernel,
    read_json_body,
    require_access,
    tools,
)

from . import convert, embeddings, render, responses
from .schemas import (
    ChatCompletionOut,
    ChatCompletionRequest,
    CompletionOut,
    CompletionRequest,
    ErrorOut,
    ModelListOut,
    ModelOut,
)
from .settings import OpenAISettings

log = logging.getLogger("adyton.openai")


def _documented(func: Callable[..., Awaitable[Response]], body: type | None,
                ok: type) -> Callable[..., Awaitable[Response]]:
    if body is not None:
        func = document_request(body)(func)
    func = document_response(ok, 200)(func)
    for status in (400, 401, 404, 413, 429, 503):
        func = document_response(ErrorOut, status)(func)
    return func


def credentials_from_request(wire_name: str, kernel: Kernel) -> Credentials:
    """``Credentials.from_headers``; an Authorization header that is not
    ``Bearer …`` is a 401 when an authenticator is installed."""
    found = Credentials.from_headers(request.headers, wire_format=wire_name, client_address=request.remote_addr)
    # (the authenticators first: looking up a missing header costs more)
    if found.kind == "none" and kernel.authenticators \
            and request.headers.get("Authorization", "").strip():
        raise Unauthorized(
            "malformed Authorization header: expected 'Authorization: Bearer YOUR_API_KEY'",
            code="invalid_authorization_header",
        )
    return found


class _CompleteOpenAPI(OpenAPIProvider):
    """quart-schema's document, completed by the kernel with every surface's
    error statuses (``Kernel.complete_openapi``): the one OpenAPI document of
    the app lists what every route may answer, not only the OpenAI ones."""

    def schema(self) -> dict[str, Any]:
        return current_kernel().complete_openapi(super().schema())


def _pass_responses_through(app: Quart) -> None:
    """quart-schema wraps ``app.make_response`` to turn a route's pydantic
    model, dataclass or dict into JSON. A ``Response`` (what every route
    here returns) comes out of that conversion as it went in, after a dozen
    type checks and config lookups per request: hand it straight to Quart's
    own ``make_response``; anything else still goes through quart-schema."""
    converting = app.make_response
    plain = getattr(converting, "__wrapped__", None)  # (functools.wraps in quart_schema.wrap_make_response)
    if plain is None:
        return

    async def make_response(result: Any) -> Any:
        if isinstance(result, Response):
            return await plain(result)
        return await converting(result)

    app.make_response = make_response  # type: ignore[method-assign]


class OpenAIWire(WireFormat):
    name = "openai"
    url_prefixes = ("/v1/",)
    error_schema = DEFAULT_ERROR_SCHEMA  # {"error": {"message", "type", "param", "code"}}
    exposed_headers = ("x-request-id", "x-adyton-ignored-params")

    def __init__(self) -> None:
        self.started = int(time.time())
        bp = Blueprint("openai", __name__)

        async def list_models() -> Response:
            """List models

            The installed models (and their aliases) in OpenAI's list format."""
            return await self.list_models()

        async def retrieve_model(model: str) -> Response:
            """Retrieve a model"""
            return await self.retrieve_model(model)

        async def chat_completions() -> Response:
            """Create a chat completion

            OpenAI-compatible; `stream: true` answers with server-sent events."""
            return await self.chat_completions()

        async def completions() -> Response:
            """Create a text completion (legacy)

            OpenAI-compatible; `stream: true` answers with server-sent events."""
            return await self.completions()

        bp.add_url_rule("/v1/models", "models", _documented(list_models, None, ModelListOut), methods=["GET"])
        bp.add_url_rule("/v1/models/<path:model>", "model", _documented(retrieve_model, None, ModelOut),
                        methods=["GET"])
        bp.add_url_rule("/v1/chat/completions", "chat_completions",
                        _documented(chat_completions, ChatCompletionRequest, ChatCompletionOut), methods=["POST"])
        bp.add_url_rule("/v1/completions", "completions",
                        _documented(completions, CompletionRequest, CompletionOut), methods=["POST"])
        for rule, endpoint, view, body, ok, methods in (*embeddings.routes(self), *responses.routes(self)):
            bp.add_url_rule(rule, endpoint, _documented(view, body, ok), methods=methods)
        self._blueprint = bp

    # -- WireFormat ----------------------------------------------------------------

    @property
    def blueprint(self) -> Blueprint:
        return self._blueprint

    def init_app(self, app: Quart) -> None:
        # one quart-schema per app: another wire format may have set it up already
        if "QUART_SCHEMA" not in app.extensions:
            QuartSchema(
                app,
                info={"title": "adyton", "version": "0.1.0",
                      "description": "A self-hosted LLM inference server (OpenAI-compatible under /v1)."},
                security_schemes={
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in_": "header", "name": "x-api-key"},
                },
                security=[{"bearer": []}, {"apiKey": []}],
                openapi_provider_class=_CompleteOpenAPI,
            )
            _pass_responses_through(app)

    def render_error(self, error: AdytonError) -> Response:
        response = jsonify(render.error_body(error))
        response.status_code = error.status
        for key, value in error.response_headers().items():
            response.headers[key] = value
        if error.status == 401 and "WWW-Authenticate" not in response.headers:
            response.headers["WWW-Authenticate"] = 'Bearer realm="adyton"'
        return response

    def example_request(self, base_url: str) -> str | None:
        body = '{"messages": [{"role": "user", "content": "Say hello in one sentence."}]}'
        return (f"curl {shlex.quote(base_url.rstrip('/') + '/v1/chat/completions')} "
                f"-H 'Content-Type: application/json' -H 'Authorization: Bearer YOUR_API_KEY' "
                f"-d {shlex.quote(body)}")

    # -- models ----------------------------------------------------------------------

    def _entry(self, model_id: str, owned_by: str, created: int) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created or self.started, "owned_by": owned_by}

    def _public_id(self, model_id: str, owned_by: str, settings: OpenAISettings) -> str:
        if settings.namespaced_ids and "/" not in model_id:
            return f"{owned_by}/{model_id}"
        return model_id

    def _model_name(self, model_id: str, kernel: Kernel, settings: OpenAISettings) -> str:
        """The id a response reports for the kernel's ``model_id``."""
        if not settings.namespaced_ids:
            return model_id
        for _, info in kernel.list_models():
            if info.id == model_id:
                return self._public_id(model_id, settings.owned_by or info.owned_by, settings)
        return model_id

    async def list_models(self) -> Response:
        kernel = current_kernel()
        await require_access("models", credentials_from_request(self.name, kernel))  # [access] models
        settings = kernel.section("openai", OpenAISettings)
        data: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _, info in kernel.list_models():
            owned_by = settings.owned_by or info.owned_by
            names = [self._public_id(info.id, owned_by, settings)]
            if settings.list_aliases:
                names += info.aliases
            for name in names:
                if name not in seen:
                    seen.add(name)
                    data.append(self._entry(name, owned_by, info.created))
        return jsonify({"object": "list", "data": data})

    async def retrieve_model(self, model: str) -> Response:
        kernel = current_kernel()
        await require_access("models", credentials_from_request(self.name, kernel))
        _, info = kernel.resolve_model(model)
        settings = kernel.section("openai", OpenAISettings)
        return jsonify(self._entry(model, settings.owned_by or info.owned_by, info.created))

    # -- generation ----------------------------------------------------------------

    async def _body(self, model_cls: type, kernel: Kernel, settings: OpenAISettings) -> tuple[Any, dict[str, Any]]:
        body = await read_json_body(kernel=kernel)
        return convert.load(model_cls, body, settings.extra_params)

    def _headers(self, parsed: convert.Parsed, generation: Generation | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if generation is not None:
            headers.update(generation.headers)
            headers["x-request-id"] = generation.id
        if parsed.ignored:
            headers["x-adyton-ignored-params"] = ", ".join(parsed.ignored)
        return headers

    @staticmethod
    def _server_limits(parsed: convert.Parsed, settings: OpenAISettings) -> None:
        """The operator's time budget and repetition stop (``[openai]``)."""
        request = parsed.request
        if request.time_budget_s is None:
            request.time_budget_s = settings.time_budget_s
        if settings.stop_repetition and not request.shapes_output():
            request.stop_repetition = settings.stop_repetition

    def _check_ignored(self, parsed: convert.Parsed, settings: OpenAISettings) -> None:
        if parsed.ignored and settings.strict:
            raise convert.Unsupported(
                f"this server does not honour the parameter(s) {', '.join(parsed.ignored)} "
                "(openai.strict is on)",
                param=parsed.ignored[0],
            )

    @staticmethod
    def _submitter(credentials: Credentials, kernel: Kernel) -> Callable[[convert.Parsed], Awaitable[Generation]]:

        async def submit(parsed: convert.Parsed) -> Generation:
            generation = await kernel.submit(parsed.request, credentials)
            if parsed.request.stream:
                await generation.wait_started()
            return generation

        return submit

    async def chat_completions(self) -> Response:
        # the kernel and the settings looked up once a request, not at each step
        kernel = current_kernel()
        settings = kernel.section("openai", OpenAISettings)
        body, extension = await self._body(ChatCompletionRequest, kernel, settings)
        parsed = convert.chat_request(body, extension)
        self._check_ignored(parsed, settings)
        self._server_limits(parsed, settings)
        generation = await self._submitter(credentials_from_request(self.name, kernel), kernel)(parsed)
        headers = self._headers(parsed, generation)
        if parsed.request.stream:
            chunks = render.ChatChunks(f"chatcmpl-{generation.id}", generation.created,
                                       self._model_name(generation.model, kernel, settings), parsed.include_usage)
            return self._stream(self._chat_events(generation, parsed, chunks, settings.ping), headers)
        result = await generation.result()
        response = jsonify(self._chat_body(result, parsed, kernel, settings))
        response.headers.update(headers)
        return response

    @staticmethod
    def _chat_message(text: str, parsed: convert.Parsed) -> tuple[dict[str, Any], bool]:
        """The assistant message; True if it called tools."""
        request = parsed.request
        if not request.tools or request.tool_choice == "none":
            return {"role": "assistant", "content": text, "refusal": None}, False
        content, calls = tools.split_tool_calls(text, request.tools)
        if not calls:
            return {"role": "assistant", "content": content, "refusal": None}, False
        return {"role": "assistant", "content": content.strip() or None, "refusal": None,
                "tool_calls": render.tool_calls(calls)}, True

    def _chat_choice(self, c: Any, parsed: convert.Parsed) -> dict[str, Any]:
        message, called = self._chat_message(c.text, parsed)
        return self._with_reports({
            "index": c.index,
            "message": message,
            "logprobs": render.chat_logprobs(c.logprobs) if parsed.logprobs is not None else None,
            "finish_reason": render.chat_finish_reason(c.finish_reason, called),
        }, c.reports)

    def _chat_body(self, result: GenerationResult, parsed: convert.Parsed, kernel: Kernel,
                   settings: OpenAISettings) -> dict[str, Any]:
        model = self._model_name(result.model, kernel, settings)
        return {
            "id": f"chatcmpl-{result.id}",
            "object": "chat.completion",
            "created": result.created,
            "model": model,
            "system_fingerprint": render.fingerprint(model),
            "choices": [self._chat_choice(c, parsed) for c in result.choices],
            "usage": result.usage.as_dict(),
        }

    @staticmethod
    def _with_reports(choice: dict[str, Any], reports: dict[str, Any]) -> dict[str, Any]:
        if reports:
            choice["reports"] = reports
        return choice

    async def _chat_events(self, generation: Generation, parsed: convert.Parsed,
                           chunks: render.ChatChunks, ping: bool) -> AsyncIterator[str]:
        # runs after the handler returned: no request or app context here
        want_logprobs = parsed.logprobs is not None
        request = parsed.request
        # calls a constraint keeps valid stream their arguments as they come
        constrained = any(c.kind == "tool_calls" for p in generation.processors for c in p.handles)
        readers = ([tools.ToolCallReader(request.tools, stream_arguments=constrained) for _ in range(request.n)]
                   if request.tools and request.tool_choice != "none" else None)
        sent = [0] * request.n  # tool calls sent per choice
        for index in range(request.n):
            yield chunks.role(index)
        events = generation.events()
        try:
            async for event in events:
                if type(event) is TextDelta:
                    if readers is None:
                        yield chunks.content(event.index, event.text, event.logprobs if want_logprobs else None)
                    else:
                        for piece in readers[event.index].feed(event.text):
                            yield self._tool_piece(chunks, event.index, piece, sent)
                elif type(event) is ChoiceFinished:
                    called = False
                    if readers is not None:
                        reader = readers[event.index]
                        for piece in reader.finish():
                            yield self._tool_piece(chunks, event.index, piece, sent)
                        called = sent[event.index] > 0
                    yield chunks.finish(event.index, render.chat_finish_reason(event.finish_reason, called))
                elif type(event) is Waiting and ping:
                    yield render.PING
        except AdytonError as exc:
            yield render.sse_error(exc)
            return
        except Exception as exc:  # the status line is long gone: tell the client in-band
            log.exception("chat stream %s failed", generation.id)
            yield render.sse_error(BackendError(f"internal error: {type(exc).__name__}"))
            return
        finally:
            await events.aclose()
            await generation.aclose()
        if parsed.include_usage:
            yield chunks.usage(generation.usage.as_dict())
        yield render.DONE

    @staticmethod
    def _tool_piece(chunks: render.ChatChunks, index: int, piece: Any, sent: list[int]) -> str:
        if isinstance(piece, tools.ArgumentsPiece):
            return chunks.tool_call_arguments(index, sent[index] - 1, piece.text)
        if isinstance(piece, tools.CallStart):
            sent[index] += 1
            return chunks.tool_call_start(index, sent[index] - 1, piece.id, piece.name)
        if isinstance(piece, tools.CallPiece):
            sent[index] += 1
            return chunks.tool_call(index, sent[index] - 1, piece.call)
        return chunks.content(index, piece.text)

    # -- legacy completions ------------------------------------------------------------

    async def completions(self) -> Response:
        kernel = current_kernel()
        settings = kernel.section("openai", OpenAISettings)
        body, extension = await self._body(CompletionRequest, kernel, settings)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        parsed = [convert.completion_request(body, p, extension) for p in prompts]
        self._check_ignored(parsed[0], settings)
        for item in parsed:
            self._server_limits(item, settings)
        submit = self._submitter(credentials_from_request(self.name, kernel), kernel)
        first = await submit(parsed[0])
        headers = self._headers(parsed[0], first)
        if parsed[0].request.stream:
            chunks = render.CompletionChunks(f"cmpl-{first.id}", first.created,
                                             self._model_name(first.model, kernel, settings), parsed[0].include_usage)
            return self._stream(self._completion_events(first, parsed, chunks, settings.ping, submit), headers)
        results = [await first.result()]
        for item in parsed[1:]:
            results.append(await (await submit(item)).result())
            headers.update(results[-1].headers)
        response = jsonify(self._completion_body(results, parsed, kernel, settings))
        response.headers.update(headers)
        return response

    def _completion_body(self, results: list[GenerationResult], parsed: list[convert.Parsed], kernel: Kernel,
                         settings: OpenAISettings) -> dict[str, Any]:
        first = results[0]
        model = self._model_name(first.model, kernel, settings)
        choices = []
        prompt_tokens = completion_tokens = 0
        for k, (result, item) in enumerate(zip(results, parsed, strict=True)):
            n = item.request.n
            prompt_tokens += result.usage.prompt_tokens
            completion_tokens += result.usage.completion_tokens
            echo = item.echo or ""
            for c in result.choices:
                choices.append(self._with_reports({
                    "index": k * n + c.index,
                    "text": echo + c.text,
                    "logprobs": render.legacy_logprobs(c.logprobs, item.logprobs or 0, len(echo))
                    if item.logprobs is not None else None,
                    "finish_reason": render.finish_reason(c.finish_reason),
                }, c.reports))
        return {
            "id": f"cmpl-{first.id}",
            "object": "text_completion",
            "created": first.created,
            "model": model,
            "system_fingerprint": render.fingerprint(model),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _completion_events(self, first: Generation, parsed: list[convert.Parsed],
                                 chunks: render.CompletionChunks, ping: bool,
                                 submit: Callable[[convert.Parsed], Awaitable[Generation]]) -> AsyncIterator[str]:
        # runs after the handler returned: no request or app context here
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        generation: Generation | None = first
        try:
            for k, item in enumerate(parsed):
                if generation is None:
                    generation = await submit(item)
                n = item.request.n
                k_logprobs = item.logprobs
                offsets = [0] * n
                if item.echo:
                    for i in range(n):
                        yield chunks.content(k * n + i, item.echo)
                        offsets[i] = len(item.echo)
                events = generation.events()
                try:
                    async for event in events:
                        if type(event) is TextDelta:
                            lp = None
                            if k_logprobs is not None:
                                lp = render.legacy_logprobs(event.logprobs or [], k_logprobs, offsets[event.index])
                            offsets[event.index] += len(event.text)
                            yield chunks.content(k * n + event.index, event.text, lp)
                        elif type(event) is ChoiceFinished:
                            yield chunks.finish(k * n + event.index, render.finish_reason(event.finish_reason))
                        elif type(event) is Waiting and ping:
                            yield render.PING
                finally:
                    await events.aclose()
                    await generation.aclose()
                usage["prompt_tokens"] += generation.usage.prompt_tokens
                usage["completion_tokens"] += generation.usage.completion_tokens
                generation = None
        except AdytonError as exc:
            yield render.sse_error(exc)
            return
        except Exception as exc:
            log.exception("completion stream failed")
            yield render.sse_error(BackendError(f"internal error: {type(exc).__name__}"))
            return
        finally:
            if generation is not None:
                await generation.aclose()
        if parsed[0].include_usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield chunks.usage(usage)
        yield render.DONE

    # -- SSE ---------------------------------------------------------------------------

    @staticmethod
    def _stream(body: AsyncIterator[str], headers: dict[str, str]) -> Response:
        response = Response(body, content_type="text/event-stream; charset=utf-8")
        response.headers.update(headers)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None  # a long generation is not a stuck response
        return response


__all__ = ["InvalidRequest", "OpenAIWire", "credentials_from_request"]
