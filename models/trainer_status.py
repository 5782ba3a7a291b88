"""Where a trainer stands: the record both trainers' ``status()`` return and their callers read.

A single :class:`~hepstream.models.trainer.StreamTrainer` and a data-parallel
coordinator answer with the same record, so the actor, the CLI and the
Prometheus collector drive either one. :meth:`TrainerStatus.as_dict` is the
JSON they print or send over Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainerStatus:
    events_trained: int
    chunks: int
    duplicate_chunks: int
    bad_messages: int
    dead_letters: int
    version: int | None  # the newest version this trainer published or resumed from
    epoch: int
    offsets: dict[int, int]  # the next offset to read, per partition
    metrics: dict[str, Any]  # prequential metrics (PrequentialMetrics.summary, drift included)
    last_error: str | None  # the latest refused message or refused checkpoint, and why
    store_error: str | None = None  # while the model store refuses checkpoints: why (store, folder, cause)
    checkpoint_failures: int = 0  # checkpoints the store refused in this run
    checkpoint_age_s: float | None = None  # seconds since the last checkpoint succeeded (or the run started)
    workers: list[dict[str, Any]] | None = None  # data-parallel runs: each worker's partitions, node and counters
    workers_lost: int = 0  # data-parallel runs: workers lost in this run (their node or process gone)
    last_worker_loss: str | None = None  # data-parallel runs: which worker, which node, what happened next
    events_validation: int = 0  # events of the validation slice: consumed, never learned (models/validation.py)
    validation_chunks: int = 0
    versions_rejected: int = 0  # versions the quality gate kept from the server in this run (models/gate.py)

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values; ``workers`` and the losses only for a data-parallel run."""
        status = dataclasses.asdict(self)
        if self.workers is None:
            for name in ("workers", "workers_lost", "last_worker_loss"):
                del status[name]
        return status
