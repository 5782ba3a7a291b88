"""Mixing in the trainer: a bounded buffer of prepared chunks from which steps draw at random, and class weights.

A step learns ``chunks_per_step`` chunks; taken in arrival order they are a
window of the stream, and a stream that arrives sample by sample makes that
window one class for a long time. With ``training.shuffle_chunks`` the chunks
polled go into a buffer of that many chunks across the trainer's partitions,
and each step draws its chunks from the whole buffer at random (seeded by
``training.seed``, so a fixed seed and arrival order give the same steps).
The buffer holds prepared chunks (decoded features, labels, weights), so its
memory is about ``shuffle_chunks`` chunks' features; a chunk waits in it
about ``shuffle_chunks / chunks_per_step`` steps on average before it is learned.

Nothing in the buffer counts as learned: the trainer's position holds each
waiting chunk's offset as *pending* (:class:`~hepstream.models.position.Position`),
a checkpoint resumes each partition from its oldest pending chunk, and what
was dealt with beyond it is skipped when read again (:class:`~hepstream.models.position.Replay`).

``training.class_weights: balanced`` weighs each event by ``n / (k * n_c)``
over the events of the ``k`` classes prepared so far (``n_c`` of its class), so
that a class that is rare in the stream weighs as much in the loss as a frequent one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hepstream.models.learner import Prepared
from hepstream.models.preparation import class_counts, weighted


@dataclass(frozen=True)
class Waiting:
    """A chunk in the buffer, and where it came from: it is learned once drawn."""

    partition: int
    offset: int
    key: str
    chunk: Prepared


class ShuffleBuffer:
    """At most ``capacity`` chunks; :meth:`draw` takes ``per_step`` of them at random.

    >>> buffer = ShuffleBuffer(capacity=4, per_step=2, seed=1)
    >>> for offset in range(4):
    ...     buffer.add(Waiting(offset % 2, offset, f"k{offset}", None))
    >>> buffer.full(), len(buffer)
    (True, 4)
    >>> sorted(w.key for w in buffer.draw()), len(buffer)
    (['k1', 'k2'], 2)
    """

    def __init__(self, capacity: int, per_step: int, seed: int):
        self.capacity = capacity
        self.per_step = per_step
        self._waiting: list[Waiting] = []
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, waiting: Waiting) -> None:
        self._waiting.append(waiting)

    def full(self) -> bool:
        return len(self._waiting) >= self.capacity

    def keys(self) -> set[str]:
        """The keys waiting: a copy of one sent again meanwhile is a duplicate, as if it had been learned."""
        return {w.key for w in self._waiting}

    def draw(self) -> list[Waiting]:
        """Up to ``per_step`` chunks, drawn uniformly from the whole buffer, and removed from it."""
        picked = set(self._rng.choice(len(self._waiting), min(self.per_step, len(self._waiting)), replace=False).tolist())
        drawn = [w for i, w in enumerate(self._waiting) if i in picked]
        self._waiting = [w for i, w in enumerate(self._waiting) if i not in picked]
        return drawn


class ClassWeights:
    """``balanced`` weights from the events of each class prepared so far; ``none`` leaves chunks as they are.

    >>> weights = ClassWeights("balanced", classes=2)
    >>> chunk = Prepared(None, np.array([1, 0, 0, 0]), None)
    >>> weights.weigh([chunk])[0].weights.tolist()
    [2.0, 0.6666666865348816, 0.6666666865348816, 0.6666666865348816]
    """

    def __init__(self, mode: str, classes: int):
        self.mode = mode
        self.counts = np.zeros(max(classes, 2), np.int64)

    def weigh(self, chunks: list[Prepared]) -> list[Prepared]:
        if self.mode == "none" or not chunks:
            return chunks
        return weighted(chunks, self.count([class_counts(c.labels, len(self.counts)) for c in chunks]))

    def count(self, counts: list[np.ndarray]) -> np.ndarray:
        """Add a group's events of each class (one array per chunk); the weight of each class after them.

        The preparation pool calls it with the counts its workers report, in message order, as :meth:`weigh` is.
        """
        for chunk_counts in counts:
            self.counts += chunk_counts
        present = self.counts > 0
        per_class = np.zeros(len(self.counts), np.float32)
        per_class[present] = self.counts.sum() / (present.sum() * self.counts[present])
        return per_class

    def state_dict(self) -> list[int]:
        return self.counts.tolist()

    def load_state_dict(self, counts: list[int]) -> None:
        self.counts = np.asarray(counts, np.int64)
