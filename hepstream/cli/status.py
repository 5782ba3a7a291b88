"""``hepstream status``: what every stage of a running ``hepstream run`` is doing, read from the stages themselves.

Nothing is guessed from logs: the supervisor's state file says which
processes run (and why one last exited), the producer's manifest what the
broker acknowledged, the topic its end offsets, the trainer's ``/metrics``
what it learned, the store its newest version, and the server's
``/v1/models/<name>`` and ``/metrics`` what it serves and how fast. Rates
(events/s, requests/s) are the difference between two readings
``--sample-s`` apart.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from hepstream.cli.jobs import config_argument
from hepstream.cli.run import follow_status_path
from hepstream.config import KafkaConfig, load_config
from hepstream.run_state import RunState, state_dir, state_path
from hepstream.serve.watcher import not_served

PROBE_TIMEOUT_S = 2.0
# A counter's family holds its "_total" sample and, for counters of prometheus_client's own, a "_created" time.
_PROBED_ROUTES = ("/metrics", "/v1/models/{name}")
_EVENTS_TRAINED = ("hepstream_trainer_events_trained", "hepstream_trainer_events_trained_total")
_EVENTS_VALIDATION = ("hepstream_trainer_events_validation", "hepstream_trainer_events_validation_total")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("status", help="show what every stage of a running `hepstream run` is doing")
    config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sample-s", type=float, default=1.0, help="interval between the two readings of rates")
    parser.set_defaults(run=run)


def _scrape(url: str) -> dict[str, list] | None:
    """Samples of a Prometheus endpoint by metric family name; ``None`` when it does not answer with metrics
    (Serve's proxy answers 404 with a line of text until the application is deployed)."""
    try:
        answer = requests.get(url, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException:
        return None
    if not answer.ok:
        return None
    try:
        return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}
    except ValueError:
        return None


def _value(metrics: dict | None, family: str, sample: str | None = None) -> float | None:
    samples = [s for s in (metrics or {}).get(family, []) if sample is None or s.name == sample]
    return sum(s.value for s in samples) if samples else None


def _requests(metrics: dict | None) -> tuple[float | None, int]:
    """Requests answered and those answered with an error, less the routes ``status`` itself asks."""
    if metrics is None:
        return None, 0
    answered = [s for s in metrics.get("hepstream_requests", [])
                if s.name == "hepstream_requests_total" and s.labels.get("route") not in _PROBED_ROUTES]
    return sum(s.value for s in answered), int(sum(s.value for s in answered if int(s.labels["code"]) >= 400))


def _quantile_ms(metrics: dict | None, q: float) -> float | None:
    """The upper bound of the latency bucket holding quantile ``q`` of every request since the replica started."""
    buckets: dict[float, float] = {}
    for sample in (metrics or {}).get("hepstream_request_duration_seconds", []):
        if sample.name.endswith("_bucket"):
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    if not buckets or buckets[max(buckets)] == 0:
        return None
    total = buckets[max(buckets)]
    bound = next(b for b in sorted(buckets) if buckets[b] >= q * total)
    return None if bound == float("inf") else bound * 1000


def _end_offsets(bootstrap: str, kafka: KafkaConfig, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    from hepstream.kafka import new_consumer

    consumer = new_consumer(bootstrap, kafka, request_timeout_ms=5_000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def _served_version(state: RunState) -> int | None:
    try:
        answer = requests.get(f"{state.serve_url}/v1/models/{state.model}", timeout=PROBE_TIMEOUT_S)
    except requests.RequestException:
        return None
    return answer.json().get("version") if answer.ok else None


def _rate(before: float | None, after: float | None, seconds: float) -> float | None:
    return None if before is None or after is None else round((after - before) / seconds, 1)


def _read_json(path: Path) -> dict:
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}


def _producer(state: RunState) -> dict:
    """Acknowledged chunks per the manifest; files seen and failed from the following producer's status file,
    or, not following, from its report once it has finished."""
    from hepstream.streaming.manifest import acknowledged

    published = acknowledged(state.manifest)
    follower = _read_json(follow_status_path(state_dir(state.store)))
    stage = state.stage("producer")
    report = {}
    if not follower and stage is not None and stage.state != "running" and stage.output:
        report = _read_json(Path(stage.output))
    failures = follower.get("files_failed", report.get("failures", {}))
    return {"files_seen": follower.get("files_seen", report.get("files_ok", 0) + len(failures)),
            "files_published": published.files, "files_pending": follower.get("files_pending", []),
            "files_failed": len(failures), "failures": failures,
            "events_published": published.events, "chunks_published": published.chunks}


def gather(state: RunState, kafka: KafkaConfig, sample_s: float) -> dict:
    """One reading of the whole service, as the JSON object ``--json`` prints."""
    from hepstream.models.store import ModelStore

    serve_metrics_url = f"{state.serve_url}/metrics"
    trainer_before, serve_before = _scrape(state.trainer_metrics_url), _scrape(serve_metrics_url)
    time.sleep(sample_s)
    trainer, serve = _scrape(state.trainer_metrics_url), _scrape(serve_metrics_url)
    producer = _producer(state)
    store = ModelStore(state.store, state.model)
    newest = store.latest()
    meta = store.read_meta(newest) if newest is not None else None
    trained = _value(trainer, *_EVENTS_TRAINED)
    events_trained = int(trained) if trained is not None else (meta.events_seen if meta else 0)
    held = _value(trainer, *_EVENTS_VALIDATION)
    events_validation = int(held) if held is not None else (meta.counters.get("events_validation", 0) if meta else 0)
    ends = _end_offsets(state.bootstrap, kafka, state.topic)
    metrics = meta.metrics if meta else {}
    requests_total, failed = _requests(serve)
    served = _served_version(state)
    return {
        "running": True,
        "supervisor_pid": state.pid,
        "uptime_s": round(time.time() - state.started, 1),
        "bootstrap": state.bootstrap,
        "embedded_broker_pid": state.broker_pid,
        "stages": {s.name: {"state": s.state, "pid": s.pid, "restarts": s.restarts, "last_exit": s.last_exit,
                            "last_error": list(s.last_error), "log": s.log} for s in state.stages},
        **producer,
        "topic": state.topic,
        "end_offsets": {str(p): o for p, o in ends.items()},
        "messages": sum(ends.values()),
        "events_trained": events_trained,
        "events_validation": events_validation,  # held in the validation slice: consumed, never learned
        "lag_events": producer["events_published"] - events_trained - events_validation,
        "trainer_events_per_s": _rate(_value(trainer_before, *_EVENTS_TRAINED), trained, sample_s),
        "trainer_answers": trainer is not None,
        "version_newest": newest,
        "version_served": served,
        # Why the newer versions do not answer: the quality gate's reasons (models/gate.py), or not swapped in yet.
        "versions_not_served": not_served(store, served, None) if served is not None else [],
        "versions_rejected": int(_value(trainer, "hepstream_trainer_versions_rejected",
                                        "hepstream_trainer_versions_rejected_total") or 0),
        "prequential_auc": _value(trainer, "hepstream_trainer_overall_auc") or metrics.get("auc"),
        "prequential_log_loss": _value(trainer, "hepstream_trainer_log_loss") or metrics.get("log_loss"),
        "drift_alarms": int(_value(trainer, "hepstream_trainer_drift_detections", "hepstream_trainer_drift_detections_total") or 0),
        "serve_url": state.serve_url,
        "requests": int(requests_total or 0),
        "requests_per_s": _rate(_requests(serve_before)[0], requests_total, sample_s),
        "failed_requests": failed,
        "latency_p50_ms": _quantile_ms(serve, 0.5),
        "latency_p99_ms": _quantile_ms(serve, 0.99),
    }


def _table(status: dict) -> Table:
    table = Table(title=f"hepstream run (pid {status['supervisor_pid']}, up {status['uptime_s']:.0f} s)",
                  show_header=False)
    for name, stage in status["stages"].items():
        line = f"{stage['state']}, pid {stage['pid']}, {stage['restarts']} restarts"
        if stage["last_exit"]:
            line += f"; last exit: {stage['last_exit']}" + "".join(f"\n  {e}" for e in stage["last_error"][-3:])
        table.add_row(name, line)
    rows = {
        "files seen / published / failed": f"{status['files_seen']} / {status['files_published']} / "
                                           f"{status['files_failed']}",
        "files pending": len(status["files_pending"]),
        "events published": f"{status['events_published']:,}",
        "topic end offsets": f"{status['topic']}: {status['end_offsets']}",
        "events trained / validation / lag": f"{status['events_trained']:,} / {status['events_validation']:,} / "
                                             f"{status['lag_events']:,}",
        "trainer events/s": status["trainer_events_per_s"],
        "version newest / served": f"{status['version_newest']} / {status['version_served']}",
        "versions rejected by the gate (this run)": status["versions_rejected"],
        "prequential AUC / log-loss": f"{status['prequential_auc']} / {status['prequential_log_loss']}",
        "drift alarms": status["drift_alarms"],
        "serving": status["serve_url"],
        "requests/s, failed": f"{status['requests_per_s']}, {status['failed_requests']}",
        "latency p50 / p99 (ms, bucket bound)": f"{status['latency_p50_ms']} / {status['latency_p99_ms']}",
    }
    for row in status["versions_not_served"]:
        rows[f"version {row['version']}: not served"] = row["why"]
    for url, reason in status["failures"].items():
        rows[f"failed: {url}"] = reason
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def run(args) -> int:
    config = load_config(args.config)
    state = RunState.read(state_path(config.store.path))
    if state is None:
        message = f"no hepstream run is running for store {config.store.path} (start one with `hepstream run`)"
        print(json.dumps({"running": False, "message": message}) if args.json else message)
        return 3
    status = gather(state, config.kafka, args.sample_s)
    if args.json:
        print(json.dumps(status))
    else:
        Console().print(_table(status))
    return 0
