"""Ray actors around the trainers: :class:`~hepstream.models.trainer.StreamTrainer`, or with
``training.workers`` > 1 the coordinator of :mod:`hepstream.models.data_parallel` and its worker actors.

The trainer loop runs in a thread inside the actor so that ``status`` and
``stop`` calls are answered while it trains (the actor allows a few
concurrent calls). A trainer asks Ray for a GPU only when the cluster has one
(one per worker when it has that many); a coordinator asks for no CPU, since
it only waits on its workers, which take one CPU each.
"""

from __future__ import annotations

import logging
import threading
import traceback

import ray

from hepstream.config import Config
from hepstream.models.data_parallel import DataParallelTrainer, RoundWorker
from hepstream.models.trainer import StreamTrainer

log = logging.getLogger(__name__)


class WorkerActor(RoundWorker):
    def __init__(self, config: dict, bootstrap: str, partitions: list[int]):
        super().__init__(Config.model_validate(config), bootstrap, partitions)


class RayWorkers:
    """A coordinator's pool of :class:`WorkerActor`; killing the pool (or the coordinator that owns it) ends them."""

    def __init__(self, config: Config, bootstrap: str):
        self.config = config
        self.bootstrap = bootstrap
        self.actors: list = []

    def start(self, splits: list[list[int]]) -> None:
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < len(splits):
            log.warning("%d trainer workers need a CPU each; the Ray cluster has %s", len(splits), resources.get("CPU"))
        gpus = 1 if resources.get("GPU", 0) >= len(splits) else 0
        worker_class = ray.remote(num_cpus=1, num_gpus=gpus)(WorkerActor)
        config = self.config.model_dump(mode="json")
        self.actors = [worker_class.remote(config, self.bootstrap, split) for split in splits]

    def call(self, method: str, *args) -> list:
        args = [ray.put(a) for a in args]  # sent once, however many workers read it
        return ray.get([getattr(actor, method).remote(*args) for actor in self.actors])

    def call_one(self, index: int, method: str, *args):
        return ray.get(getattr(self.actors[index], method).remote(*args))

    def close(self) -> None:
        try:
            self.call("close")
        except ray.exceptions.RayError as error:  # a dead worker has nothing left to close
            log.warning("closing trainer workers: %s", error)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []


def data_parallel_trainer(config: Config, bootstrap: str, partitions: list[int] | None = None) -> DataParallelTrainer:
    """A coordinator whose workers are Ray actors; assumes ``ray.init`` was called."""
    return DataParallelTrainer(config, bootstrap, RayWorkers(config, bootstrap), partitions)


class TrainerActor:
    def __init__(self, config: dict, bootstrap: str, partitions: list[int] | None = None):
        self.config = Config.model_validate(config)
        if self.config.training.workers > 1:
            self.trainer = data_parallel_trainer(self.config, bootstrap, partitions)
        else:
            self.trainer = StreamTrainer(self.config, bootstrap, partitions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None

    def _run(self) -> None:
        try:
            self.trainer.run(self._stop)
        except Exception:
            self._failure = traceback.format_exc()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hepstream-trainer", daemon=True)
            self._thread.start()

    def status(self) -> dict:
        running = self._thread is not None and self._thread.is_alive()
        return {**self.trainer.status().as_dict(), "running": running, "failure": self._failure}

    def stop(self, timeout_s: float = 60.0) -> dict:
        """Stop consuming, write the final checkpoint, and return the final status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.status()


def spawn_trainer(config: Config, bootstrap: str, partitions: list[int] | None = None):
    """Create and start a trainer actor (a coordinator when ``training.workers`` > 1); assumes ``ray.init``."""
    single = config.training.workers == 1
    gpus = 1 if single and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor_class = ray.remote(num_cpus=1 if single else 0, num_gpus=gpus, max_concurrency=4)(TrainerActor)
    actor = actor_class.remote(config.model_dump(mode="json"), bootstrap, partitions)
    ray.get(actor.start.remote())
    return actor
