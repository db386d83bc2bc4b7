"""``Metrics``: the Prometheus metrics of one app (``/metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import AdytonError

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


class Metrics:
    """Prometheus metrics of one app (its own registry: no globals)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_waiting = Gauge("adyton_queue_waiting", "Requests waiting for an engine", ["backend"], registry=r)
        self.queue_running = Gauge("adyton_queue_running", "Requests running on an engine", ["backend"], registry=r)
        self.rejections = Counter("adyton_rejections_total", "Requests refused, by reason",
                                  ["reason", "wire_format"], registry=r)
        self.requests = Counter("adyton_requests_total", "Generations that ended, by outcome",
                                ["outcome", "wire_format"], registry=r)
        self.cut_short_total = Counter(
            "adyton_cut_short_total", "Choices ended early by the server: time_budget or repetition",
            ["reason", "wire_format"], registry=r)
        self.prompt_tokens = Counter("adyton_prompt_tokens_total", "Prompt tokens of admitted requests", registry=r)
        self.completion_tokens = Counter("adyton_completion_tokens_total", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "adyton_time_to_first_token_seconds", "From engine start to the first token", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.tokens_per_second = Histogram(
            "adyton_decode_tokens_per_second", "Decode speed per choice", registry=r,
            buckets=(1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000),
        )
        #: (outcome, wire format) -> its ``requests`` child: ``labels()``
        #: takes a lock and builds the key on every call
        self._requests_by: dict[tuple[str, str], Any] = {}

    def cut_short(self, reason: str, wire_format: str) -> None:
        self.cut_short_total.labels(reason, wire_format or "-").inc()

    def rejected(self, exc: AdytonError, wire_format: str) -> None:
        self.rejections.labels(exc.code or exc.type, wire_format or "-").inc()

    def finished(self, generation: Any, outcome: str) -> None:
        key = (outcome, generation.wire_format or "-")
        child = self._requests_by.get(key)
        if child is None:
            child = self._requests_by[key] = self.requests.labels(*key)
        child.inc()
        if outcome != "rejected":
            self.prompt_tokens.inc(generation.usage.prompt_tokens)
            self.completion_tokens.inc(generation.usage.completion_tokens)

    def observe_generation(self, ttft_s: float, tokens: int, decode_s: float) -> None:
        self.ttft.observe(ttft_s)
        if tokens > 1 and decode_s > 0:
            self.tokens_per_second.observe((tokens - 1) / decode_s)

    def refresh(self) -> None:
        for name, queue in self.kernel.queues.items():
            self.queue_waiting.labels(name).set(queue.waiting)
            self.queue_running.labels(name).set(queue.running)

