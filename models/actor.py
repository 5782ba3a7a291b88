"""The Ray actor around :class:`~hepstream.models.trainer.StreamTrainer`.

The trainer loop runs in a thread inside the actor so that ``status`` and
``stop`` calls are answered while it trains (the actor allows a few
concurrent calls). The actor asks Ray for a GPU only when the cluster has one.
"""

from __future__ import annotations

import threading
import traceback

import ray

from hepstream.config import Config
from hepstream.models.trainer import StreamTrainer


class TrainerActor:
    def __init__(self, config: dict, bootstrap: str, partitions: list[int] | None = None):
        import torch

        self.config = Config.model_validate(config)
        torch.set_num_threads(self.config.training.threads)
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
        return {**self.trainer.status(), "running": running, "failure": self._failure}

    def stop(self, timeout_s: float = 60.0) -> dict:
        """Stop consuming, write the final checkpoint, and return the final status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.status()


def spawn_trainer(config: Config, bootstrap: str, partitions: list[int] | None = None):
    """Create and start a trainer actor; assumes ``ray.init`` was called."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_concurrency=4)(TrainerActor)
    actor = actor_class.remote(config.model_dump(mode="json"), bootstrap, partitions)
    ray.get(actor.start.remote())
    return actor
