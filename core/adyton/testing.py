"""Helpers for testing adyton and its plugins.

* ``ScriptedBackend``: a real ``Backend`` whose "model" yields a fixed script
  of tokens, with a settable delay per token. It builds real logits (the
  scripted token is the most likely) and calls the kernel's sampler chain,
  so sampling, processors, stop strings, the queue and cancellation all run
  for real — only the neural network is replaced.
* ``JsonTestWire``: a minimal wire format (``POST /t/generate`` takes a
  ``GenerationRequest`` as JSON; credentials from ``x-api-key``/``x-key``,
  ``Authorization: Bearer`` or a ``sessionId`` body field; errors as
  ``{"err": {...}}``) for testing plugins that are not wire formats.
* ``serve_in_thread``: run an app on hypercorn on a free loopback port in a
  background thread, for tests over a real socket; ``LoopbackServers``: a
  fixture's worth of them (fixed plugins plus scripted backends).
* ``BackendConformance`` (with ``ConformanceServer`` and ``RecordingLimiter``):
  the backend-neutral tests every backend plugin runs against itself
  (OpenAI and Axiom wires, guided JSON, the context check, exact limits).
* ``model_path`` / ``require_model`` / ``link_model``: the real default model
  for real-model tests (``ADYTON_TEST_MODEL``), and a models directory that
  holds a link to it (for adyton-llama's ``[llama] models_dir``). A missing
  model skips the test, or fails it when ``ADYTON_REQUIRE_MODEL`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from quart import Blueprint, Response, jsonify, request

from .kernel import current_kernel
from .body import read_json_body
from .errors import AdytonError, InvalidRequest
from .hookspecs import Backend, StepFunction, WireFormat, hookimpl
from .settings import default_home
from .types import (
    ChoiceFinished,
    Credentials,
    FinishReason,
    GenerationRequest,
    TextDelta,
    Waiting,
    ModelInfo,
    PreparedPrompt,
    TokenPiece,
    Vocabulary,
)


class ScriptedBackend(Backend):
    """A backend that "generates" ``script`` (a list of token texts)."""

    def __init__(
        self,
        script: Sequence[str] = ("Hello", ",", " world", "!"),
        *,
        name: str = "scripted",
        models: Sequence[str] = ("scripted-model",),
        delay_s: float = 0.0,
        load_s: float = 0.0,
        context_length: int = 4096,
        max_concurrency: int = 1,
        eos_at_end: bool = True,
        extra_vocab: Sequence[str] = (),
        embedding_dimensions: int | None = None,
    ) -> None:
        self.name = name
        self.script = list(script)
        self.model_ids = list(models)
        self.delay_s = delay_s
        self.load_s = load_s
        self.context_length = context_length
        self.max_concurrency = max_concurrency
        self.eos_at_end = eos_at_end
        #: None: no embeddings; else ``embed`` gives bag-of-words vectors this long
        self.embedding_size = embedding_dimensions
        self.embedded: list[list[int]] = []  #: every input ``embed`` read
        words = sorted(set(self.script) | set(extra_vocab))
        self.tokens = ["<eos>"] + words
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.eos_id = 0
        self._loaded: str | None = None
        self.loads: list[str] = []
        self.generations = 0
        self.prompts: list[str] = []
        self.running = threading.Event()  #: set while generate() runs
        self.max_parallel_seen = 0
        self._parallel = 0
        self._lock = threading.Lock()

    # -- Backend ------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, context_length=self.context_length, owned_by="test") for m in self.model_ids]

    def loaded_model(self) -> str | None:
        return self._loaded

    def load_model(self, model_id: str) -> None:
        if model_id not in self.model_ids:
            raise ValueError(f"no model {model_id}")
        time.sleep(self.load_s)
        self._loaded = model_id
        self.loads.append(model_id)

    def prepare(self, request: GenerationRequest, model: ModelInfo) -> PreparedPrompt:
        if request.messages is not None:
            text = "".join(f"<{m.role}>{m.content}\n" for m in request.messages) + "<assistant>"
        else:
            text = request.prompt or ""
        # one token per whitespace-separated word, at least one
        n = max(1, len(text.split()))
        return PreparedPrompt(model=model, token_ids=list(range(n)), text=text,
                              context_length=self.context_length)

    def vocabulary(self, model: ModelInfo) -> Vocabulary:
        def encode(text: str) -> list[int]:
            out, rest = [], text
            while rest:
                match = max((t for t in self.tokens[1:] if rest.startswith(t)), key=len, default=None)
                if match is None:
                    raise ValueError(f"cannot encode {rest!r}")
                out.append(self.ids[match])
                rest = rest[len(match):]
            return out

        return Vocabulary(
            token_bytes=[b""] + [t.encode() for t in self.tokens[1:]],
            eos_token_ids=[self.eos_id],
            control_token_ids=frozenset({self.eos_id}),
            encode=encode,
        )

    def generate(self, prompt: PreparedPrompt, step: StepFunction, max_tokens: int,
                 cancelled: threading.Event) -> Iterator[TokenPiece]:
        self.generations += 1
        self.prompts.append(prompt.text)
        with self._lock:
            self._parallel += 1
            self.max_parallel_seen = max(self.max_parallel_seen, self._parallel)
        self.running.set()
        try:
            vocab = len(self.tokens)
            for i in range(max_tokens):
                if cancelled.is_set():
                    return
                if self.delay_s:
                    time.sleep(self.delay_s)
                logits = np.zeros(vocab, dtype=np.float32)
                if i < len(self.script):
                    logits[self.ids[self.script[i]]] = 10.0
                elif self.eos_at_end:
                    logits[self.eos_id] = 10.0
                else:
                    logits[self.ids[self.script[i % len(self.script)]]] = 10.0
                token = step(logits)
                if token == self.eos_id:
                    yield TokenPiece(token, "", FinishReason.STOP)
                    return
                last = i + 1 == max_tokens
                yield TokenPiece(token, self.tokens[token], FinishReason.LENGTH if last else None)
        finally:
            with self._lock:
                self._parallel -= 1
            self.running.clear()


    # -- embeddings (with ``embedding_dimensions=N``) ----------------------------
    # one token per whitespace-separated word (a stable hash of the word, below
    # 2**16); the vector counts each token id modulo N, L2-normalised: inputs
    # with the same words get the same vector, inputs sharing words are close

    def embedding_dimensions(self, model: ModelInfo) -> int | None:
        return self.embedding_size

    def prepare_embeddings(self, inputs, model: ModelInfo) -> list[list[int]]:
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                out.append([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=2).digest(), "big")
                            for w in item.split()])
            else:
                if any(not 0 <= t < 2**16 for t in item):
                    raise InvalidRequest(f"input[{i}] holds a token id outside the vocabulary (0..65535)",
                                         param="input")
                out.append(list(item))
        return out

    def embed(self, model: ModelInfo, inputs: list[list[int]], cancelled: threading.Event) -> list[np.ndarray]:
        size = self.embedding_size or 0
        vectors = []
        for ids in inputs:
            if cancelled.is_set():
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            self.embedded.append(list(ids))
            v = np.zeros(size, dtype=np.float32)
            for t in ids:
                v[t % size] += 1.0
            norm = float(np.linalg.norm(v))
            vectors.append(v / norm if norm else v)
        return vectors


class BackendPlugin:
    """Wrap backend objects as a plugin: ``create_app(plugins=[BackendPlugin(b)])``."""

    def __init__(self, *backends: Backend, name: str = "test-backends") -> None:
        self.backends = backends
        self.__name__ = name

    @hookimpl
    def register_backends(self, register, kernel):
        for backend in self.backends:
            register(backend)


class JsonTestWire(WireFormat):
    """POST /t/generate with a GenerationRequest as JSON; ``stream`` gives
    NDJSON lines. Errors: {"err": {...}} (a shape unlike the kernel's, so
    tests can see which surface rendered an error).

    Credentials, as the real wire formats find them (see ``credentials``):
    ``Credentials.from_headers`` (``x-api-key`` gives kind "api_key", else
    ``Authorization: Bearer <secret>`` gives "bearer"); else an ``x-key``
    header gives "api_key"; else a ``sessionId`` field in the body (taken out
    before the body is validated) gives "account_number"; else "none".
    """

    name = "testwire"
    url_prefixes = ("/t/",)

    def __init__(self) -> None:
        bp = Blueprint("testwire", __name__)
        bp.add_url_rule("/t/generate", "generate", self.generate, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self):
        return self._bp

    def render_error(self, error: AdytonError) -> Response:
        response = jsonify({"err": {"status": error.status, "type": error.type, "code": error.code,
                                    "message": error.message}})
        response.status_code = error.status
        response.headers.update(error.response_headers())
        return response

    def credentials(self, body: dict) -> Credentials:
        """The caller's credentials from the current request's headers and
        ``body`` (whose ``sessionId``, if any, is removed)."""
        session = body.pop("sessionId", None)
        found = Credentials.from_headers(request.headers, wire_format=self.name)
        if found.kind != "none":
            return found
        key = request.headers.get("x-key")
        if key:
            return Credentials(kind="api_key", secret=key, wire_format=self.name)
        if session is not None:
            return Credentials(kind="account_number", secret=str(session), wire_format=self.name)
        return found

    async def generate(self):
        body = await read_json_body()
        credentials = self.credentials(body)
        try:
            gen_request = GenerationRequest.model_validate(body)
        except Exception as exc:  # noqa: BLE001
            raise InvalidRequest(str(exc)) from None
        generation = await current_kernel().pipeline.submit(gen_request, credentials)
        if not gen_request.stream:
            result = await generation.result()
            response = jsonify({
                "model": result.model,
                "choices": [{"text": c.text, "finish_reason": c.finish_reason.value,
                             "logprobs": [lp.logprob for lp in c.logprobs] if c.logprobs else None,
                             "reports": c.reports}
                            for c in result.choices],
                "usage": result.usage.as_dict(),
            })
            response.headers.update(result.headers)
            return response
        await generation.wait_started()

        async def lines():
            async for event in generation.events(keepalive_s=0.2):
                if isinstance(event, TextDelta):
                    yield json.dumps({"index": event.index, "text": event.text}) + "\n"
                elif isinstance(event, ChoiceFinished):
                    yield json.dumps({"index": event.index, "finish": event.finish_reason.value}) + "\n"
                elif isinstance(event, Waiting):
                    yield json.dumps({"ping": True}) + "\n"
            yield json.dumps({"usage": generation.usage.as_dict()}) + "\n"

        return Response(lines(), content_type="application/x-ndjson", headers=generation.headers)


class JsonTestWirePlugin:
    """Registers a ``JsonTestWire``: ``create_app(plugins=[JsonTestWirePlugin(), ...])``."""

    __name__ = "testwire"

    @hookimpl
    def register_wire_formats(self, register, kernel):
        register(JsonTestWire())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An app served by hypercorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> "ServerThread":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 2.0
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._stop = asyncio.Event()

            async def main() -> None:
                started.set()
                await serve(self.app, config, shutdown_trigger=self._stop.wait)

            try:
                loop.run_until_complete(main())
            except BaseException as exc:  # noqa: BLE001
                self._error = exc
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"adyton-test-server-{self.port}", daemon=True)
        self._thread.start()
        started.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"server failed to start: {self._error!r}") from self._error
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            time.sleep(0.02)
        raise RuntimeError("server did not start listening in time")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[ServerThread]:
    with ServerThread(app) as server:
        yield server


class LoopbackServers:
    """Start apps made of some fixed plugins (a wire format, say) and scripted
    backends, each on its own loopback port; ``stop_all()`` stops them. A
    test fixture for a wire format::

        @pytest.fixture
        def serve(tmp_path):
            servers = LoopbackServers(tmp_path / "home", my_wire_plugin)
            yield servers          # serve(ScriptedBackend([...]), settings={...})
            servers.stop_all()
    """

    def __init__(self, home: str | os.PathLike[str], *plugins: Any) -> None:
        self.home = os.fspath(home)
        self.plugins = plugins
        self.servers: list[ServerThread] = []

    def __call__(self, *backends: Backend, plugins: Sequence[Any] = (),
                 settings: dict[str, Any] | None = None) -> ServerThread:
        """Serve the fixed plugins, ``plugins`` and ``backends`` (default: one
        ``ScriptedBackend()``), with ``settings`` over ``{"home": home}``."""
        from .app import create_app

        app = create_app(
            settings={"home": self.home, **(settings or {})},
            plugins=[*self.plugins, BackendPlugin(*(backends or (ScriptedBackend(),))), *plugins],
            load_entrypoints=False,
        )
        server = ServerThread(app).start()
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()


# -- the real model ------------------------------------------------------------

#: the default model's file name (SmolLM2-135M-Instruct, Q4_1 GGUF)
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    """The model file real-model tests use: ``$ADYTON_TEST_MODEL``, else the
    default model where ``adyton pull smollm2`` puts it
    (``$ADYTON_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf``). Whether the file
    exists is not checked (see ``require_model``)."""
    configured = os.environ.get("ADYTON_TEST_MODEL")
    if configured:
        return Path(configured)
    home = Path(os.environ.get("ADYTON_HOME") or default_home())
    return home / "models" / DEFAULT_MODEL_FILE


def require_model(path: Path | None = None,
                  how: str = "set ADYTON_TEST_MODEL, or run: adyton pull smollm2") -> Path:
    """``path`` (default: ``model_path()``) if that file exists; else skip the
    calling test, or fail it when ``ADYTON_REQUIRE_MODEL`` is set (``make
    test``, CI): there the real-model tests must run. ``how`` tells how to
    get the file."""
    import pytest

    path = path or model_path()
    if not path.is_file():
        message = f"model file {path} not found ({how})"
        if os.environ.get("ADYTON_REQUIRE_MODEL"):
            pytest.fail(f"ADYTON_REQUIRE_MODEL is set but {message}", pytrace=False)
        pytest.skip(message)
    return path


def link_model(models_dir: str | os.PathLike[str]) -> Path:
    """Make ``models_dir`` (created if needed) hold a symlink to the real
    model (``require_model()``: skips or fails the test when it is missing)
    and return it, e.g. for adyton-llama, which serves the ``*.gguf`` files of
    its models directory::

        models = link_model(tmp_path / "models")
        app = create_app(settings={"home": ..., "llama": {"models_dir": str(models)}},
                         plugins=[adyton_llama, ...], load_entrypoints=False)
    """
    model = require_model()
    models = Path(models_dir)
    models.mkdir(parents=True, exist_ok=True)
    link = models / model.name
    if not link.exists():
        link.symlink_to(model.resolve())
    return models


# -- a conformance suite for backend plugins ----------------------------------------


class RecordingLimiter:
    """A ``Limiter`` (made on first use, so importing this module stays light)
    that admits everything and records each reservation and its settlement:
    ``BackendConformance`` checks that every reservation is settled exactly
    once, with the usage the client was told."""

    def __new__(cls) -> Any:
        from .hookspecs import Limiter
        from .types import Reservation

        class _Recording(Limiter):
            name = "recording"

            def __init__(self) -> None:
                self.reserved: list[Any] = []
                self.settled: list[tuple[Any, Any, str]] = []
                self._lock = threading.Lock()

            async def reserve(self, principal, cost):
                reservation = Reservation(principal=principal, cost=cost, data=len(self.reserved))
                with self._lock:
                    self.reserved.append(reservation)
                return reservation

            async def settle(self, reservation, usage, outcome):
                with self._lock:
                    self.settled.append((reservation, usage.model_copy(), outcome))

            def settlements_of(self, reservation) -> list[tuple[Any, str]]:
                return [(u, o) for r, u, o in self.settled if r is reservation]

        return _Recording()


class ConformanceServer:
    """A loopback server for ``BackendConformance``: the given backend plugin(s)
    with the OpenAI and Axiom wire formats and guided decoding (each when
    installed), the JSON test wire and a ``RecordingLimiter``."""

    WIRE_PLUGINS = ("adyton_openai", "adyton_axiom", "adyton_guided")

    def __init__(self, home: str | os.PathLike[str], backend_plugins: Sequence[Any],
                 settings: dict[str, Any], model: str) -> None:
        import importlib

        from .app import create_app

        self.model = model
        self.limiter = RecordingLimiter()
        limiter = self.limiter
        self.loaded: set[str] = set()
        plugins: list[Any] = []
        for name in self.WIRE_PLUGINS:
            try:
                plugins.append(importlib.import_module(name))
                self.loaded.add(name)
            except ImportError:
                pass

        class _LimiterPlugin:
            __name__ = "recording-limiter"

            @hookimpl
            def register_limiters(self, register, kernel):
                register(limiter)

        self.app = create_app(settings={"home": os.fspath(home), **settings},
                              plugins=[*backend_plugins, *plugins, JsonTestWirePlugin(), _LimiterPlugin()],
                              load_entrypoints=False)
        self.server = ServerThread(self.app).start()
        self.base_url = self.server.base_url

    def require(self, plugin: str) -> None:
        import pytest

        if plugin not in self.loaded:
            pytest.skip(f"{plugin} is not installed")

    def stop(self) -> None:
        self.server.stop()


class BackendConformance:
    """The backend-neutral behaviour every backend plugin must show, over a
    real socket: OpenAI chat (plain, streamed with usage, ``n``, logprobs,
    stop strings), the Axiom wire, guided JSON-schema output, the context
    check, and limits settled exactly once with the usage the client saw.

    Use it from a backend plugin's tests: subclass it in a test module and
    provide a ``conformance`` fixture giving a started ``ConformanceServer``::

        class TestConformance(BackendConformance):
            @pytest.fixture(scope="class")
            @classmethod
            def conformance(cls, tmp_path_factory):
                server = ConformanceServer(tmp_path_factory.mktemp("home"), [my_plugin],
                                           {"mine": {...}}, model="my-model")
                yield server
                server.stop()

    The model must be an instruction-tuned chat model whose context holds a
    few hundred tokens; the tests use greedy decoding and small ``max_tokens``.
    """

    CHAT = [{"role": "user", "content": "Name three colors."}]

    @staticmethod
    def _post(server: ConformanceServer, path: str, body: dict[str, Any]):
        import httpx

        return httpx.post(server.base_url + path, json=body, timeout=300)

    def _chat(self, server: ConformanceServer, **extra: Any):
        body = {"model": server.model, "messages": self.CHAT, "temperature": 0, "max_tokens": 12, **extra}
        return self._post(server, "/v1/chat/completions", body)

    def _check_settled(self, server: ConformanceServer, usages: list[dict[str, int]]) -> None:
        """The last ``len(usages)`` reservations were each settled once, "ok",
        with exactly the usage the client was told, within what was reserved."""
        limiter = server.limiter
        deadline = time.monotonic() + 10
        recent = limiter.reserved[-len(usages):]
        while time.monotonic() < deadline and any(not limiter.settlements_of(r) for r in recent):
            time.sleep(0.01)  # a stream's settlement may land just after its last byte
        assert len(recent) == len(usages)
        for reservation, usage in zip(recent, usages):
            settled = limiter.settlements_of(reservation)
            assert len(settled) == 1, settled
            got, outcome = settled[0]
            assert outcome == "ok"
            assert (got.prompt_tokens, got.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
            assert got.completion_tokens <= reservation.cost.max_completion_tokens
            assert got.prompt_tokens == reservation.cost.prompt_tokens

    def test_openai_chat_and_stream_agree(self, conformance):
        conformance.require("adyton_openai")
        r = self._chat(conformance)
        assert r.status_code == 200, r.text
        body = r.json()
        text = body["choices"][0]["message"]["content"]
        usage = body["usage"]
        assert text.strip() and 1 <= usage["completion_tokens"] <= 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        import httpx

        with httpx.stream("POST", conformance.base_url + "/v1/chat/completions", timeout=300,
                          json={"model": conformance.model, "messages": self.CHAT, "temperature": 0,
                                "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}) as s:
            assert s.status_code == 200
            events = [json.loads(line[6:]) for line in s.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert streamed == text  # greedy: the same text either way
        stream_usage = [e["usage"] for e in events if e.get("usage")]
        assert stream_usage and stream_usage[-1]["completion_tokens"] == usage["completion_tokens"]
        self._check_settled(conformance, [usage, stream_usage[-1]])

    def test_openai_n_and_logprobs(self, conformance):
        conformance.require("adyton_openai")
        r = self._chat(conformance, n=2, temperature=0.9, seed=7, max_tokens=6, logprobs=True, top_logprobs=2)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0, 1]
        tokens = 0
        for choice in body["choices"]:
            content = choice["logprobs"]["content"]
            tokens += len(content)
            for entry in content:
                assert entry["logprob"] <= 0.0
                assert len(entry["top_logprobs"]) == 2
                assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-4
        assert tokens == body["usage"]["completion_tokens"]
        self._check_settled(conformance, [body["usage"]])

    def test_openai_stop_string(self, conformance):
        conformance.require("adyton_openai")
        full = self._chat(conformance, max_tokens=16).json()["choices"][0]["message"]["content"]
        words = full.split()
        if len(words) < 3:
            import pytest

            pytest.skip(f"the greedy answer is too short to cut: {full!r}")
        stop = words[2]
        r = self._chat(conformance, max_tokens=16, stop=[stop])
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == full[: full.index(stop)]

    def test_axiom_chat(self, conformance):
        conformance.require("adyton_axiom")
        body = {"model": conformance.model, "sessionId": "1234567890" * 6 + "1234",
                "system_prompt": "You are a helpful assistant", "messages": self.CHAT}
        r = self._post(conformance, "/api/chat", body)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["message"], str) and r.json()["message"].strip()

    def test_guided_json_schema(self, conformance):
        conformance.require("adyton_openai")
        conformance.require("adyton_guided")
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                  "required": ["name", "age"], "additionalProperties": False}
        r = self._chat(conformance, messages=[{"role": "user", "content": "Invent a person."}], max_tokens=40,
                       response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
        assert r.status_code == 200, r.text
        value = json.loads(r.json()["choices"][0]["message"]["content"])
        assert set(value) == {"name", "age"}
        assert isinstance(value["name"], str) and isinstance(value["age"], int)
        self._check_settled(conformance, [r.json()["usage"]])

    def test_context_overflow_is_400_before_any_reservation(self, conformance):
        conformance.require("adyton_openai")
        before = len(conformance.limiter.reserved)
        r = self._chat(conformance, messages=[{"role": "user", "content": "word " * 40000}], max_tokens=4)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert len(conformance.limiter.reserved) == before
