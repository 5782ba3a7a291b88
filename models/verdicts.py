"""What preparing a group of messages decided about each: kept, a duplicate, replayed, held for validation,
or refused (and why).

Made by the trainer's own preparation or by the preparation pool (:mod:`~hepstream.models.prepare_pool`);
the trainer learns a :class:`Step` the same way wherever it was prepared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hepstream.models.learner import Group
from hepstream.models.preparation import Prepared


@dataclass(frozen=True)
class Ok:
    """A chunk kept for learning, under its key."""

    record: Any  # kafka-python ConsumerRecord
    key: str


@dataclass(frozen=True)
class Duplicate:
    """A chunk whose key was learned already in this epoch: a producer sent it again."""

    record: Any
    key: str


@dataclass(frozen=True)
class Replayed:
    """A record read again after a restart that was dealt with before it
    (see :class:`~hepstream.models.position.Replay`): no count."""

    record: Any


@dataclass(frozen=True)
class Held:
    """A chunk of the validation slice (:mod:`~hepstream.models.validation`): checked, kept to score versions,
    never learned."""

    record: Any
    key: str
    batch: Any  # pyarrow RecordBatch
    labels: Any  # numpy int64, one per event


@dataclass(frozen=True)
class Refused:
    """A message that cannot be used, and why: it goes to the dead-letter topic."""

    record: Any
    error: Exception


Verdict = Ok | Duplicate | Replayed | Held | Refused


@dataclass(frozen=True)
class Step:
    """A group of messages made ready: a verdict per message, in order, and the prepared features of the
    chunks kept (None when none was kept), or with a shuffle buffer each kept chunk prepared on its own."""

    verdicts: list[Verdict]
    group: Group | None
    chunks: tuple[Prepared, ...] = ()

    @property
    def keys(self) -> list[str]:
        """The keys of the chunks kept, in the order of the group's features."""
        return [v.key for v in self.verdicts if isinstance(v, Ok)]

    @property
    def consumed_keys(self) -> list[str]:
        """The keys of the chunks kept or held for validation: sent again, either is a duplicate."""
        return [v.key for v in self.verdicts if isinstance(v, (Ok, Held))]
