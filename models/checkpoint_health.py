"""When a trainer checkpoints next, and whether the model store is taking its checkpoints.

A store that refuses a version (full, read-only, no permission) must not kill
the trainer: a restart would only meet the same store again, a crash loop that
throws away what was learned each time. The trainer keeps learning, reports
the failure (log, status, ``/metrics``) and tries again with exponential
backoff; the state not yet checkpointed goes into the first version that
succeeds, and Kafka commits wait for it, so exactly-once holds as before.
Shared by the single trainer and the data-parallel coordinator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hepstream.backoff import Backoff
from hepstream.models.store import ModelStore
from hepstream.models.store_errors import StoreWriteError

log = logging.getLogger(__name__)

LONGEST_RETRY_WAIT_S = 60.0  # once an operator frees space, the trainer notices within a minute


class CheckpointHealth:
    """Checkpoints every ``every_s`` while the store takes them; after a refusal, again after
    ``every_s``, doubling up to :data:`LONGEST_RETRY_WAIT_S` (or ``every_s`` if longer)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.backoff = Backoff(retries=32, first_s=every_s, max_s=max(every_s, LONGEST_RETRY_WAIT_S))
        self.failures = 0  # refused checkpoints in this run
        self.error: str | None = None  # while the store refuses checkpoints: the latest refusal
        self._clock = clock
        self._last_good = clock()  # the run's start stands in until its first checkpoint
        self._next = self._last_good + every_s
        self._waits = self.backoff.waits()
        self._streak = 0

    def due(self) -> bool:
        return self._clock() >= self._next

    def seconds_since_good(self) -> float:
        """Seconds since the last checkpoint that succeeded, or since the run started before its first."""
        return self._clock() - self._last_good

    def status_fields(self) -> dict:
        """This record's part of a :class:`~hepstream.models.trainer_status.TrainerStatus`."""
        return {"store_error": self.error, "checkpoint_failures": self.failures,
                "checkpoint_age_s": round(self.seconds_since_good(), 3)}

    def publish(self, store: ModelStore, *parts) -> int:
        """``store.publish(*parts)``, noting whether the store took the version; a refusal is raised."""
        try:
            version = store.publish(*parts)
        except StoreWriteError as error:
            self._failed(error)
            raise
        self._succeeded()
        return version

    def _succeeded(self) -> None:
        if self._streak:
            log.warning("the model store takes checkpoints again, after %d refused", self._streak)
        self.error, self._streak, self._waits = None, 0, self.backoff.waits()
        self._last_good = self._clock()
        self._next = self._last_good + self.every_s

    def _failed(self, error: StoreWriteError) -> None:
        wait = next(self._waits, self.backoff.max_s)
        self.failures += 1
        self._streak += 1
        self.error = str(error)
        self._next = self._clock() + wait
        log.error("checkpoint refused (%d in a row); training goes on, next try in %.1f s: %s",
                  self._streak, wait, error)
