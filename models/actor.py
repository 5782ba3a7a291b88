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
import re
import threading
import traceback

import ray

from hepstream.config import Config
from hepstream.models.data_parallel import DataParallelTrainer, RoundWorker, WorkerLost
from hepstream.models.trainer import StreamTrainer

log = logging.getLogger(__name__)


class WorkerActor(RoundWorker):
    def __init__(self, config: dict, bootstrap: str):
        super().__init__(Config.model_validate(config), bootstrap)

    def node(self) -> str:
        """The Ray node this worker runs on, for the status and for the line that reports its loss."""
        return ray.get_runtime_context().get_node_id()


# How a worker is seen to be gone: its actor died or cannot be reached (a killed raylet shows first as
# ActorUnavailableError, a few seconds later as ActorDiedError once Ray declares the node dead), or its node
# died. An unreachable worker is given up at once: going back to the newest version is always safe, and
# waiting for Ray's node health check would add its 15-20 s to every recovery (docs/cluster.md).
GONE = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError)


class RayWorkers:
    """A coordinator's pool of :class:`WorkerActor`, spread over the cluster's nodes (so one lost node loses
    one worker); killing the pool (or the coordinator that owns it) ends them. A dropped worker's replacement
    is asked of Ray at once and joins through :meth:`arrived` once Ray has started it."""

    def __init__(self, config: Config, bootstrap: str):
        self.config = config
        self.bootstrap = bootstrap
        self.actors: list = []
        self.nodes: list[str] = []
        self._pending: dict = {}  # node() ObjectRef of a replacement -> its actor

    def __len__(self) -> int:
        return len(self.actors)

    def _actor_class(self, count: int):
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < count:
            log.warning("%d trainer workers need a CPU each; the Ray cluster has %s", count, resources.get("CPU"))
        gpus = 1 if resources.get("GPU", 0) >= count else 0
        return ray.remote(num_cpus=1, num_gpus=gpus)(WorkerActor).options(scheduling_strategy="SPREAD")

    def start(self, count: int) -> None:
        self._class = self._actor_class(count)
        self._config = self.config.model_dump(mode="json")
        self.actors = [self._class.remote(self._config, self.bootstrap) for _ in range(count)]
        self.nodes = [None] * count  # until they answer: a worker lost starting is named by its place
        self.nodes = self.call("node")

    def _get(self, refs: list) -> list:
        """Each worker's answer, in order; a worker that is gone raises :class:`WorkerLost` naming it."""
        answers = []
        for index, ref in enumerate(refs):
            try:
                answers.append(ray.get(ref))
            except GONE as error:
                raise WorkerLost(index, self.nodes[index], _first_line(error)) from None
        return answers

    def call(self, method: str, *args) -> list:
        args = [ray.put(a) for a in args]  # sent once, however many workers read it
        return self._get([getattr(actor, method).remote(*args) for actor in self.actors])

    def call_each(self, method: str, args_per_worker: list[tuple]) -> list:
        return self._get([getattr(actor, method).remote(*args) for actor, args in zip(self.actors, args_per_worker)])

    def call_one(self, index: int, method: str, *args):
        try:
            return ray.get(getattr(self.actors[index], method).remote(*args))
        except GONE as error:
            raise WorkerLost(index, self.nodes[index], _first_line(error)) from None

    def drop(self, index: int) -> None:
        """Forget a lost worker (killed, in case it was only unreachable) and ask Ray for its replacement."""
        ray.kill(self.actors.pop(index), no_restart=True)
        self.nodes.pop(index)
        actor = self._class.remote(self._config, self.bootstrap)
        self._pending[actor.node.remote()] = actor

    def arrived(self, timeout_s: float) -> bool:
        """Whether a replacement started within ``timeout_s`` (0: has one started?); those that did join the pool."""
        if not self._pending:
            return False
        pending = list(self._pending)
        ready, _ = ray.wait(pending, num_returns=1 if timeout_s else len(pending), timeout=timeout_s)
        joined = False
        for ref in ready:
            actor = self._pending.pop(ref)
            try:
                node = ray.get(ref)
            except GONE as error:  # placed on a node that died meanwhile: ask again
                log.warning("a replacement trainer worker was lost starting (%s); asking for another",
                            _first_line(error))
                replacement = self._class.remote(self._config, self.bootstrap)
                self._pending[replacement.node.remote()] = replacement
                continue
            self.actors.append(actor)
            self.nodes.append(node)
            joined = True
        return joined

    def close(self) -> None:
        try:
            self.call("close")
        except WorkerLost as lost:  # a dead worker has nothing left to close
            log.warning("closing trainer workers: %s", lost)
        finally:
            for actor in [*self.actors, *self._pending.values()]:
                ray.kill(actor)
            self.actors, self._pending = [], {}  # the nodes stay, for the final status


def _first_line(error: Exception) -> str:
    """Ray's error as its type and first clause ("ActorUnavailableError: The actor 4f... is unavailable"),
    never its traceback nor its paragraph of possible causes.

    >>> _first_line(RuntimeError("The actor 4f is unavailable: The actor is temporarily unavailable. More."))
    'RuntimeError: The actor 4f is unavailable'
    """
    clause = _CLAUSE_END.split(str(error).strip(), maxsplit=1)[0]
    return f"{type(error).__name__}: {clause}" if clause else type(error).__name__


_CLAUSE_END = re.compile(r"[:.](?:\s|$)")


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
