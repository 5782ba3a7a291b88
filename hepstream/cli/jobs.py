"""``hepstream produce | train | serve``: each layer on its own, against an existing Kafka cluster.

These are what an operator runs as separate jobs; ``hepstream demo`` wires
all three to an embedded broker instead.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from hepstream.config import Config, ConfigError, load_config


def _config_argument(parser) -> None:
    parser.add_argument("--config", type=Path, default=os.environ.get("HEPSTREAM_CONFIG"),
                        help="pipeline YAML file (env HEPSTREAM_CONFIG)")
    parser.add_argument("--bootstrap", default=os.environ.get("HEPSTREAM_BOOTSTRAP"),
                        help="Kafka host:port, overrides kafka.bootstrap (env HEPSTREAM_BOOTSTRAP)")


def add_parser(subparsers) -> None:
    for name, run, text in (
        ("produce", run_produce, "publish the dataset's ROOT files to its Kafka topic"),
        ("train", run_train, "train online from the dataset's topic until interrupted (no Ray needed)"),
        ("serve", run_serve, "serve the newest model version over HTTP with Ray Serve until interrupted"),
    ):
        parser = subparsers.add_parser(name, help=text)
        _config_argument(parser)
        parser.set_defaults(run=run)


def _load(args) -> tuple[Config, str | None]:
    config = load_config(args.config)
    return config, args.bootstrap or config.kafka.bootstrap


def _require_bootstrap(bootstrap: str | None) -> str:
    if not bootstrap:
        raise ConfigError("kafka.bootstrap is not set (nor --bootstrap); `hepstream demo` starts an embedded broker")
    return bootstrap


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_produce(args) -> int:
    from hepstream.streaming.producer import Producer

    config, bootstrap = _load(args)
    if not config.dataset.files:
        raise ConfigError("dataset.files is empty: nothing to produce")
    producer = Producer(config, _require_bootstrap(bootstrap))
    try:
        report = producer.run(config.dataset.files)
    finally:
        producer.close()
    print(json.dumps(report.as_dict(), indent=1))
    return 1 if report.failed else 0


def run_train(args) -> int:
    from hepstream.models.trainer import StreamTrainer

    config, bootstrap = _load(args)
    trainer = StreamTrainer(config, _require_bootstrap(bootstrap))
    trainer.run(_wait_for_signal())
    print(json.dumps(trainer.status(), indent=1, default=str))
    return 0


def run_serve(args) -> int:
    import ray

    from hepstream.serve.deployment import start_serve, stop_serve

    config, _ = _load(args)
    ray.init(include_dashboard=False, logging_level="WARNING")
    try:
        url = start_serve(Path(config.store.path).resolve(), config.model.name, host=config.serve.host,
                          port=config.serve.port, poll_interval_s=config.serve.poll_interval_s,
                          max_events_per_request=config.serve.max_events_per_request)
        print(f"serving model {config.model.name!r} from {config.store.path} on {url}", flush=True)
        _wait_for_signal().wait()
    finally:
        stop_serve()
        ray.shutdown()
    return 0
