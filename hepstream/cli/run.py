"""``hepstream run``: produce, train and serve one pipeline file as one supervised service, until interrupted.

With ``kafka.bootstrap`` unset (nor ``--bootstrap``), it starts the embedded
broker on loopback, as ``hepstream demo`` does; set, it uses that Kafka, and
the stages use the Ray cluster ``RAY_ADDRESS`` names, if any. So the same
pipeline file runs on a laptop and against a cluster.

The stages are the ``produce``, ``train`` and ``serve`` commands, each a
child process under :class:`~hepstream.supervisor.Supervisor`, given the
user's file with what the service needs filled in (``<state>/pipeline.yaml``):
the broker's address, a producer manifest and a trainer metrics port when the
file sets none, and follow mode for the producer unless the file says
otherwise. The manifest and the trainer's checkpoints make a restart, of a
stage or of the whole service, send nothing twice and learn nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from hepstream.cli.jobs import config_argument
from hepstream.cli.output import Progress
from hepstream.config import Config, ConfigError, ProducerConfig, config_from_dict
from hepstream.run_state import RunState, state_dir, state_path
from hepstream.supervisor import RestartPolicy, Stage, StageSpec, Supervisor


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="produce, train and serve as one supervised service until interrupted")
    config_argument(parser)
    parser.add_argument("--max-restarts", type=int, default=RestartPolicy.max_restarts,
                        help="restarts of one stage within --restart-window-s before giving up (default %(default)s)")
    parser.add_argument("--restart-window-s", type=float, default=RestartPolicy.window_s)
    parser.set_defaults(run=run)


def _read_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the pipeline file: {error}") from None


def service_config(user: dict, bootstrap: str, folder: Path, metrics_port: int) -> dict:
    """The user's settings with what the stages need filled in; what the user set wins, but the broker."""
    sections = {name: dict(user.get(name) or {}) for name in ("kafka", "producer", "training")}
    sections["kafka"]["bootstrap"] = bootstrap
    sections["producer"].setdefault("manifest", str(folder / "producer.manifest.jsonl"))
    if "follow" in ProducerConfig.model_fields:  # follow mode, where this version of the producer has it
        sections["producer"].setdefault("follow", True)
    if not sections["training"].get("metrics_port"):
        sections["training"]["metrics_port"] = metrics_port
    return {**user, **sections}


def _stages(config_file: Path, folder: Path, policy: RestartPolicy) -> list[Stage]:
    def job(name: str, *more: str) -> tuple[str, ...]:
        return (sys.executable, "-m", "hepstream", name, "--config", str(config_file), *more)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [
        Stage(StageSpec("trainer", job("train")), folder / "logs", policy, env),
        Stage(StageSpec("server", job("serve")), folder / "logs", policy, env),
        # Exit 0 or 1 (some files failed): it has published what it found and, not following, is done.
        Stage(StageSpec("producer", job("produce", "--status-file", str(follow_status_path(folder))),
                        frozenset({0, 1})), folder / "logs", policy, env),
    ]


def follow_status_path(folder: Path) -> Path:
    """Where the following producer keeps what it has seen and done (``hepstream produce --status-file``)."""
    return folder / "producer.status.json"


def run(args) -> int:
    from hepstream.kafka import BrokerUnavailable, ensure_topic
    from hepstream.stack.broker import EmbeddedBroker
    from hepstream.stack.ports import free_port

    user = _read_file(args.config)
    config = config_from_dict(user, str(args.config or "defaults"))
    folder = state_dir(config.store.path).resolve()
    running = RunState.read(state_path(config.store.path))
    if running is not None:
        print(f"hepstream run: a service already runs on this store (supervisor pid {running.pid}); "
              f"`hepstream status --config {args.config}` shows it", file=sys.stderr)
        return 1
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    progress = Progress()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or config.kafka.bootstrap
        broker = None
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap
            progress.step(f"Kafka-protocol broker (tansu, in memory) on {bootstrap}, pid {broker.pid}")
        settings = service_config(user, bootstrap, folder, free_port())
        service = config_from_dict(settings, "the service's settings")
        config_file = folder / "pipeline.yaml"
        config_file.write_text(yaml.safe_dump(settings))
        try:
            ensure_topic(bootstrap, service.dataset.topic, service.kafka.partitions, service.kafka)
        except BrokerUnavailable as error:
            print(f"hepstream run: {error}", file=sys.stderr)
            return 3
        if broker is not None:
            _resume_on_new_log(service, progress)
        policy = RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window_s)
        follow_status_path(folder).unlink(missing_ok=True)  # an earlier run's
        stages = _stages(config_file, folder, policy)
        state_file = state_path(config.store.path)
        stack.callback(state_file.unlink, missing_ok=True)
        started = time.time()

        def write_state() -> None:
            _state(service, config_file, args.config, broker, started, stages).write(state_file)

        supervisor = Supervisor(stages, progress.step, write_state)
        progress.step(f"serving model {service.model.name!r} on {_serve_url(service)}; "
                      f"`hepstream status --config {args.config}` shows every stage")
        code = supervisor.run(stop)
        progress.step("stopped" if code == 0 else "stopped: a stage kept dying, see above")
        return code


def _resume_on_new_log(config: Config, progress: Progress) -> None:
    from hepstream.models.new_log import resume_on_new_log
    from hepstream.models.store import ModelStore

    store = ModelStore(config.store.path, config.model.name, config.store.keep)
    version = resume_on_new_log(store, config.dataset.topic)
    if version is not None:
        progress.step(f"the embedded broker starts with an empty topic: version {version} carries on from "
                      f"version {version - 1} at offset 0")


def _serve_url(config: Config) -> str:
    host = config.serve.http.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{config.serve.http.port}"


def _state(service: Config, config_file: Path, user_file, broker, started: float, stages: list[Stage]) -> RunState:
    return RunState(
        pid=os.getpid(), started=started, config=str(user_file), bootstrap=service.kafka.bootstrap,
        broker_pid=None if broker is None else broker.pid, topic=service.dataset.topic, model=service.model.name,
        store=str(Path(service.store.path).resolve()), manifest=str(service.producer.manifest),
        serve_url=_serve_url(service),
        trainer_metrics_url=f"http://127.0.0.1:{service.training.metrics_port}/metrics",
        stages=tuple(stage.snapshot() for stage in stages),
    )
