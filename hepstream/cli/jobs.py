"""``hepstream produce | train | serve``: each layer on its own, against an existing Kafka cluster.

These are what an operator runs as separate jobs; ``hepstream demo`` wires
all three to an embedded broker instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from hepstream.config import Config, ConfigError, load_config


def config_argument(parser) -> None:
    """The --config and --bootstrap pair every job that reads the pipeline file takes."""
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
        config_argument(parser)
        parser.set_defaults(run=run)


def _load(args) -> tuple[Config, str | None]:
    config = load_config(args.config)
    return config, args.bootstrap or config.kafka.bootstrap


def _require_bootstrap(bootstrap: str | None) -> str:
    if not bootstrap:
        raise ConfigError("kafka.bootstrap is not set (nor --bootstrap); `hepstream run --config FILE` starts "
                          "an embedded broker and runs every stage")
    return bootstrap


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_produce(args) -> int:
    """Exit 0 when every file went through, 1 when any failed, 3 when the brokers cannot be reached."""
    from hepstream.kafka import BrokerUnavailable
    from hepstream.streaming.producer import Producer, tune_malloc_for_chunks
    from hepstream.streaming.progress import progress_for

    config, bootstrap = _load(args)
    dataset = config.dataset
    if not (dataset.files or dataset.file_list or dataset.samples):
        raise ConfigError("dataset.files, dataset.file_list and dataset.samples are all empty: nothing to produce")
    tune_malloc_for_chunks()
    progress = progress_for(every_s=config.producer.progress_every_s)
    bootstrap = _require_bootstrap(bootstrap)
    try:
        if config.producer.ray_tasks:
            from hepstream.streaming.distributed import produce_on_ray

            report = produce_on_ray(config, bootstrap, progress=progress)
        else:
            producer = Producer(config, bootstrap, progress=progress)
            try:
                report = producer.run()
            finally:
                producer.close()
    except BrokerUnavailable as error:
        print(f"hepstream produce: {error}", file=sys.stderr)
        return 3
    progress.close(report)
    print(json.dumps(report.as_dict(), indent=1))
    return 1 if report.failed else 0


def _data_parallel_trainer(config: Config, bootstrap: str):
    """With ``training.workers`` > 1 the workers are Ray actors: this joins the cluster of a Ray job
    (or ``RAY_ADDRESS``), else starts Ray on this machine."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"training.workers is {config.training.workers}: the workers are Ray actors and Ray is "
                          "not installed (pip install 'ray[serve]'), or set training.workers: 1") from None
    from hepstream.models.actor import data_parallel_trainer

    ray.init(include_dashboard=False, logging_level="WARNING")
    return data_parallel_trainer(config, bootstrap)


def run_train(args) -> int:
    from hepstream.models.trainer import StreamTrainer

    config, bootstrap = _load(args)
    bootstrap = _require_bootstrap(bootstrap)
    if config.training.workers > 1:
        trainer = _data_parallel_trainer(config, bootstrap)
    else:
        trainer = StreamTrainer(config, bootstrap)
    if config.training.metrics_port is not None:
        from hepstream.models.monitoring import serve_metrics

        _, port = serve_metrics(config.model.name, trainer.status, config.training.metrics_port)
        print(f"trainer metrics on http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
    try:
        trainer.run(_wait_for_signal())
    finally:
        if config.training.workers > 1:
            import ray

            ray.shutdown()
    print(json.dumps(trainer.status().as_dict(), indent=1, default=str))
    return 0


def run_serve(args) -> int:
    from hepstream.serve.deployment import serving

    config, _ = _load(args)
    start = config.serve.ray
    with serving(config) as url:
        through = " through Serve's HAProxy ingress" if start.haproxy else ""
        print(f"serving model {config.model.name!r} from {config.store.path} on {url}{through}", flush=True)
        if start.direct_ingress_port is not None:
            print(f"replicas also answer directly from http://{config.serve.http.host}:{start.direct_ingress_port}",
                  flush=True)
        _wait_for_signal().wait()
    return 0
