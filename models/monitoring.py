"""Prometheus metrics of a trainer, read from its ``status()`` at scrape time.

A collector that asks the trainer on each scrape keeps one source of truth
(the counters that are checkpointed) instead of a second set of counters to
keep in step. Bound to 127.0.0.1; an operator puts a proxy or a
ServiceMonitor in front on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hepstream.models.trainer_status import TrainerStatus

_COUNTERS = {
    "events_trained": "Events learned (each once)",
    "chunks": "Chunks learned",
    "duplicate_chunks": "Chunks skipped because their key was already learned",
    "bad_messages": "Messages that could not be decoded or featurised",
    "dead_letters": "Messages sent to the dead-letter topic",
    "checkpoint_failures": "Checkpoints the model store refused in this run (full, read-only, no permission)",
    "events_validation": "Events of the validation slice: consumed, never learned",
    "versions_rejected": "Versions the quality gate kept from the server in this run",
}
_GAUGES = {"auc": "Prequential AUC over the sliding window", "overall_auc": "Prequential AUC over the stream",
           "log_loss": "Prequential log-loss over the stream", "accuracy": "Prequential accuracy over the stream",
           "window_log_loss": "Prequential log-loss over the window",
           "window_accuracy": "Prequential accuracy over the window"}


class TrainerCollector:
    def __init__(self, model: str, status: Callable[[], TrainerStatus]):
        self.model = model
        self.status = status

    def collect(self):
        status = self.status()
        for name, text in _COUNTERS.items():
            family = CounterMetricFamily(f"hepstream_trainer_{name}", text, labels=["model"])
            family.add_metric([self.model], getattr(status, name))
            yield family
        metrics = status.metrics
        for name, text in _GAUGES.items():
            if metrics.get(name) is not None:
                family = GaugeMetricFamily(f"hepstream_trainer_{name}", text, labels=["model"])
                family.add_metric([self.model], metrics[name])
                yield family
        drift = CounterMetricFamily("hepstream_trainer_drift_detections", "ADWIN drift detections on the loss",
                                    labels=["model"])
        drift.add_metric([self.model], metrics.get("drift", {}).get("detections", 0))
        yield drift
        version = GaugeMetricFamily("hepstream_trainer_model_version", "Newest published version", labels=["model"])
        version.add_metric([self.model], status.version or 0)
        yield version
        yield from self._store_health(status)

    def _store_health(self, status: TrainerStatus):
        """Whether the store takes checkpoints now, and how much learning a crash would now cost."""
        failing = GaugeMetricFamily("hepstream_trainer_store_failing",
                                    "1 while the model store refuses checkpoints, else 0", labels=["model"])
        failing.add_metric([self.model], 1 if status.store_error else 0)
        yield failing
        if status.checkpoint_age_s is not None:
            age = GaugeMetricFamily("hepstream_trainer_checkpoint_age_seconds",
                                    "Seconds since the last checkpoint succeeded (or the run started)",
                                    labels=["model"])
            age.add_metric([self.model], status.checkpoint_age_s)
            yield age


def serve_metrics(model: str, status: Callable[[], TrainerStatus], port: int):
    """Start the /metrics HTTP server on 127.0.0.1:port (0: any free port); returns (server, port)."""
    registry = CollectorRegistry()
    registry.register(TrainerCollector(model, status))
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, server.server_port
