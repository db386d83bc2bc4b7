"""``BackendConformance`` (with ``ConformanceServer`` and
``RecordingLimiter``): the backend-neutral tests every backend plugin runs
against itself (OpenAI and Axiom wires, guided JSON, the context check, exact
limits)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from ..hookspecs import hookimpl
from .servers import ServerThread
from .wire import JsonTestWirePlugin


class RecordingLimiter:
    """A ``Limiter`` (made on first use, so importing this module stays light)
    that admits everything and records each reservation and its settlement:
    ``BackendConformance`` checks that every reservation is settled exactly
    once, with the usage the client was told."""

    def __new__(cls) -> Any:
        from ..hookspecs import Limiter
        from ..types import Reservation

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

        from ..app import create_app

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

    CHAT: ClassVar[list[dict[str, str]]] = [{"role": "user", "content": "Name three colors."}]

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
        for reservation, usage in zip(recent, usages, strict=True):
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
