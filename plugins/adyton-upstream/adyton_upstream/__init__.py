"""adyton-upstream: models served by remote OpenAI-compatible engines (vLLM,
llama.cpp's server, SGLang, TGI, another adyton) behind adyton's front door.

The plugin registers the ``upstream`` backend and its ``[upstream]``
settings, starts the replicas' health checks when the app starts, and adds
its metrics to ``/metrics``. Its pieces:

- ``settings``  the ``[upstream]`` section: models, replicas, timeouts
- ``pool``      least-outstanding-requests balancing and back-off
- ``mapping``   request -> upstream body; what is refused; output verification
- ``backend``   the kernel Backend (self-sampling): prepare, stream, retry
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adyton import hookimpl

from .backend import UpstreamBackend
from .settings import ReplicaSettings, UpstreamModel, UpstreamSettings

__all__ = ["ReplicaSettings", "UpstreamBackend", "UpstreamModel", "UpstreamSettings"]


@hookimpl
def register_settings(register):
    register("upstream", UpstreamSettings)


@hookimpl
def register_backends(register, kernel):
    backend = UpstreamBackend(kernel.section("upstream", UpstreamSettings))
    register(backend)
    kernel.metrics_registry.register(_Collector(backend))


@hookimpl
def startup(kernel):
    backend = kernel.backends.get("upstream")
    if isinstance(backend, UpstreamBackend):
        backend.start_health_checks()


class _Collector:
    """The replicas' state, read at each scrape of ``/metrics``."""

    def __init__(self, backend: UpstreamBackend) -> None:
        self.backend = backend

    def collect(self):
        up = GaugeMetricFamily("adyton_upstream_replica_up", "1 if the replica is in service, 0 while it "
                               "is out (failed; retried after its back-off)", labels=["model", "replica"])
        outstanding = GaugeMetricFamily("adyton_upstream_replica_outstanding",
                                        "Requests in flight to the replica", labels=["model", "replica"])
        failures = GaugeMetricFamily("adyton_upstream_replica_consecutive_failures",
                                     "Failures in a row (the back-off doubles with each)",
                                     labels=["model", "replica"])
        for model, replicas in self.backend.pool.replicas.items():
            for r in replicas:
                up.add_metric([model, r.url], 1.0 if r.up else 0.0)
                outstanding.add_metric([model, r.url], r.outstanding)
                failures.add_metric([model, r.url], r.failures)
        errors = CounterMetricFamily("adyton_upstream_errors", "Failed attempts at a replica, by kind "
                                     "(upstream_error, upstream_timeout ...)", labels=["model", "replica", "kind"])
        for (model, url, kind), n in sorted(self.backend.errors.items()):
            errors.add_metric([model, url, kind], n)
        retries = CounterMetricFamily("adyton_upstream_retries", "Requests tried again on another replica "
                                      "after a failure before their first token", labels=["model"])
        for model, n in sorted(self.backend.retries.items()):
            retries.add_metric([model], n)
        return [up, outstanding, failures, errors, retries]
