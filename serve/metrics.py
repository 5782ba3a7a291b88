"""Prometheus metrics at ``/metrics``: what an operator watches on a serving replica.

Each app has its own registry, so several apps in one process (tests, the
benchmark) do not mix their counts; each replica is scraped on its own and
labels its model version with its replica id. Errors by status code are the
``hepstream_requests_total`` series with ``code`` >= 400.

Exported:

- ``hepstream_requests_total{route, method, code}``: answered requests
- ``hepstream_request_duration_seconds{route}``: latency histogram
- ``hepstream_batch_requests`` and ``hepstream_batch_events``: requests and events per model call
- ``hepstream_model_version{model, replica}``: the version this replica answers with (0: none yet)
- ``hepstream_model_swaps_total`` and ``hepstream_model_load_failures_total{model, replica}``
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hepstream.serve.watcher import ModelWatcher

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _WatcherCollector:
    """Reads the watcher's counters at scrape time, so the watcher itself knows nothing of Prometheus."""

    def __init__(self, watcher: ModelWatcher, model: str, replica: str):
        self.watcher = watcher
        self.labels = [model, replica]

    def collect(self):
        names = ["model", "replica"]
        current = self.watcher.current
        version = GaugeMetricFamily("hepstream_model_version", "Model version this replica answers with",
                                    labels=names)
        version.add_metric(self.labels, current.version if current is not None else 0)
        swaps = CounterMetricFamily("hepstream_model_swaps", "Versions swapped in", labels=names)
        swaps.add_metric(self.labels, self.watcher.swaps)
        failures = CounterMetricFamily("hepstream_model_load_failures", "Failed loads of a version", labels=names)
        failures.add_metric(self.labels, self.watcher.failures)
        return [version, swaps, failures]


class Metrics:
    def __init__(self, watcher: ModelWatcher, model: str, replica: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("hepstream_requests", "HTTP requests answered", ["route", "method", "code"],
                                registry=self.registry)
        self.latency = Histogram("hepstream_request_duration_seconds", "Time from request to answer", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("hepstream_batch_requests", "Requests scored by one model call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_events = Histogram("hepstream_batch_events", "Events scored by one model call",
                                      buckets=(1, 10, 100, 1_000, 10_000, 100_000), registry=self.registry)
        self.registry.register(_WatcherCollector(watcher, model, replica))

    def observe_batch(self, requests: int, events: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_events.observe(events)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every answer, including those of the auth and size-limit middleware inside it.

    Routes are labelled by their template (``/v1/models/{name}/predict``), not
    the path, so a client cannot grow the label set; unmatched paths are
    ``other``.
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an exception before the answer starts is answered 500 by the server

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
