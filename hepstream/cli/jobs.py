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
import time
from pathlib import Path

from hepstream.config import Config, ConfigError, load_config
from hepstream.run_state import write_json_atomically


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
        ("serve", run_serve, "serve the newest model version over HTTP with Ray Serve until interrupted; on "
                           "Ray of its own, or joining a running cluster with --address"),
    ):
        parser = subparsers.add_parser(name, help=text)
        config_argument(parser)
        parser.set_defaults(run=run)
        if run is run_produce:
            parser.add_argument("--follow", action="store_true",
                                help="keep listing the inputs and publish files as they land, until interrupted "
                                     "(sets producer.follow)")
            parser.add_argument("--status-file", type=Path,
                                help="following: rewrite this JSON file with what the follower has seen and done, "
                                     "every producer.poll_s (`hepstream status` reads it under `hepstream run`)")
        if run is run_serve:
            parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                                help="join the running Ray cluster whose head is at HOST:PORT (the GCS port, 6379 by "
                                     "default, as `ray start --address` takes it; env RAY_ADDRESS) instead of "
                                     "starting Ray on this machine; a cluster with token auth also wants "
                                     "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or `ray get-auth-token` "
                                     "on the head into ~/.ray/auth_token)")


def _load(args) -> tuple[Config, str | None]:
    config = load_config(args.config)
    return config, args.bootstrap or config.kafka.bootstrap


def _require_bootstrap(bootstrap: str | None) -> str:
    if not bootstrap:
        raise ConfigError("kafka.bootstrap is not set (nor --bootstrap); `hepstream run --config FILE` starts "
                          "an embedded broker and runs every stage")
    return bootstrap


class StopSignal(threading.Event):
    """Set by SIGINT or SIGTERM; remembers which and when, so the job can say how long its stop took."""

    signal_name: str | None = None
    received_at: float | None = None

    def listen(self) -> StopSignal:
        """Take SIGINT and SIGTERM (:func:`~hepstream.local_ray.init_ray` keeps them through ``ray.init``)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.receive)
        return self

    def receive(self, number: int, _frame=None) -> None:
        if not self.is_set():
            self.signal_name, self.received_at = signal.Signals(number).name, time.monotonic()
        self.set()

    def report(self, command: str, what: str) -> None:
        """After a stop by signal, one stderr line that ``hepstream jobs stop`` looks for: the stop ended well."""
        if self.received_at is not None:
            from hepstream.ray_jobs import CLEAN_STOP

            print(f"hepstream {command}: {CLEAN_STOP} {self.signal_name}: {what}, "
                  f"{time.monotonic() - self.received_at:.2f} s after the signal", file=sys.stderr, flush=True)


def _wait_for_signal() -> StopSignal:
    return StopSignal().listen()


def run_produce(args) -> int:
    """Exit 0 when every file went through, 1 when any failed, 3 when the brokers cannot be reached.

    Following (``--follow``), it runs until interrupted and exits 0 then; failed files are in the report.
    """
    from hepstream.kafka import BrokerUnavailable
    from hepstream.streaming.producer import tune_malloc_for_chunks
    from hepstream.streaming.progress import progress_for

    config, bootstrap = _load(args)
    dataset = config.dataset
    if not (dataset.files or dataset.file_list or dataset.samples):
        raise ConfigError("dataset.files, dataset.file_list and dataset.samples are all empty: nothing to produce")
    tune_malloc_for_chunks()
    progress = progress_for(every_s=config.producer.progress_every_s)
    bootstrap = _require_bootstrap(bootstrap)
    follow = getattr(args, "follow", False) or config.producer.follow  # callers' own Namespaces may lack the flag
    try:
        if follow:
            report, extra = _follow(config, bootstrap, progress, getattr(args, "status_file", None))
        else:
            report, extra = _produce_once(config, bootstrap, progress)
    except BrokerUnavailable as error:
        return _failed("produce", error, 3)
    progress.close(report)
    print(json.dumps({**report.as_dict(), **extra}, indent=1))
    return 1 if report.failed and not follow else 0


def _produce_once(config: Config, bootstrap: str, progress):
    """Publish the files found now, on Ray actors or in this process; the report and nothing to add to it."""
    from hepstream.streaming.producer import Producer

    if config.producer.ray_tasks:
        from hepstream.streaming.distributed import produce_on_ray

        return produce_on_ray(config, bootstrap, progress=progress), {}
    producer = Producer(config, bootstrap, progress=progress)
    try:
        return producer.run(), {}
    finally:
        producer.close()


def _follow(config: Config, bootstrap: str, progress, status_file: Path | None = None):
    """Publish files as they land until SIGINT or SIGTERM; the report, and which files were pending then."""
    from hepstream.streaming.follow import Follower

    stop = _wait_for_signal()
    follower = Follower(config, bootstrap, progress=progress)
    if status_file is not None:
        threading.Thread(target=_write_status_every, args=(follower, status_file, config.producer.poll_s, stop),
                         name="follow-status", daemon=True).start()
    try:
        report = follower.run(stop)
    finally:
        follower.close()
    stop.report("produce", "stopped following the inputs")
    status = follower.status().as_dict()
    if status_file is not None:
        write_json_atomically(status_file, status)
    return report, {key: status[key] for key in ("files_already_published", "files_pending")}


def _write_status_every(follower, path: Path, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        write_json_atomically(path, follower.status().as_dict())


def _data_parallel_trainer(config: Config, bootstrap: str):
    """With ``training.workers`` > 1 the workers are Ray actors: this joins the cluster of a Ray job
    (or ``RAY_ADDRESS``), else starts Ray on this machine."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(f"training.workers is {config.training.workers}: the workers are Ray actors and Ray is "
                          "not installed (pip install 'ray[serve]'), or set training.workers: 1") from None
    from hepstream.local_ray import init_ray
    from hepstream.models.actor import data_parallel_trainer

    init_ray()
    return data_parallel_trainer(config, bootstrap)


def _produce_command(args) -> str:
    """The ``hepstream produce`` that publishes what this command's configuration reads."""
    options = [f"--config {args.config}"] if args.config else []
    options += [f"--bootstrap {args.bootstrap}"] if args.bootstrap else []
    return " ".join(["hepstream produce", *options])


def _topic_is_there(config: Config, bootstrap: str, args, stop: threading.Event) -> int:
    """Wait ``training.topic_wait_s`` for the dataset's topic, before a trainer is built or Ray started.

    Returns 0 once it exists, else the exit status after one line on stderr:
    3 when the brokers do not answer, 2 when the topic never comes (its
    producer has not run: the line gives the command that publishes it).
    """
    from hepstream.kafka import BrokerUnavailable, TopicMissing, topic_partitions

    try:
        topic_partitions(bootstrap, config.kafka, config.dataset.topic, timeout_s=config.training.topic_wait_s,
                         stop=stop)
    except BrokerUnavailable as error:
        return _failed("train", error, 3)
    except TopicMissing as missing:
        if stop.is_set():
            raise KeyboardInterrupt from None
        return _failed("train", f"{missing}; publish to it first: {_produce_command(args)}", 2)
    return 0


def _failed(command: str, problem, status: int) -> int:
    """A job that cannot start: one line naming the command and the problem, no traceback."""
    print(f"hepstream {command}: {problem}", file=sys.stderr)
    return status


def run_train(args) -> int:
    """Exit 0 after a clean stop, 4 when the model store refused the final checkpoint (the message says why),
    5 when every data-parallel worker was lost and none came back."""
    from hepstream.models.data_parallel import WorkersLost
    from hepstream.models.store_errors import StoreWriteError
    from hepstream.models.trainer import StreamTrainer

    config, bootstrap = _load(args)
    bootstrap = _require_bootstrap(bootstrap)
    stop = _wait_for_signal()
    status = _topic_is_there(config, bootstrap, args, stop)
    if status:
        return status
    if config.training.workers > 1:
        trainer = _data_parallel_trainer(config, bootstrap)  # init_ray keeps the stop's handlers
    else:
        trainer = StreamTrainer(config, bootstrap)
    if config.training.metrics_port is not None:
        from hepstream.models.monitoring import serve_metrics

        _, port = serve_metrics(config.model.name, trainer.status, config.training.metrics_port)
        print(f"trainer metrics on http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
    refused = None
    try:
        trainer.run(stop)
    except StoreWriteError as error:
        refused = error  # what it learned since its last checkpoint is learned again from Kafka on restart
    except WorkersLost as lost:
        return _failed("train", lost, 5)
    finally:
        if config.training.workers > 1:
            import ray

            ray.shutdown()
    status = trainer.status()
    print(json.dumps(status.as_dict(), indent=1, default=str))
    if refused is not None:
        print(f"hepstream train: the final checkpoint failed: {refused}", file=sys.stderr)
        return 4
    stop.report("train", f"newest version v{status.version} holds {status.events_trained} events")
    return 0


def run_serve(args) -> int:
    from hepstream.serve.deployment import serving

    config, _ = _load(args)
    start = config.serve.ray
    address = getattr(args, "address", None)  # callers' own Namespaces may lack the flag
    stop = _wait_for_signal()  # before Ray and Serve start: a signal meanwhile stops Serve once it is up
    with serving(config, **({"address": address} if address else {})) as url:
        through = " through Serve's HAProxy ingress" if start.haproxy else ""
        print(f"serving model {config.model.name!r} from {config.store.path} on {url}{through}", flush=True)
        if start.direct_ingress_port is not None:
            print(f"replicas also answer directly from http://{config.serve.http.host}:{start.direct_ingress_port}",
                  flush=True)
        stop.wait()
    stop.report("serve", "Serve shut down")
    return 0
