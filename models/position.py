"""Where a trainer stands in its topic: the offsets, epoch and chunk keys checkpointed with its model.

Offsets are the trainer's own state, never Kafka's auto-commit (bytewax's
discipline): :meth:`Position.snapshot` goes into the same store version as
the model (``trainer.json``), and a restart :meth:`~Position.restore`\\ s it.
An offset is the *next* offset to read on its partition, Kafka's convention,
so resuming seeks there and neither skips nor repeats a record. Kafka is
told of the offsets only after a checkpoint (:meth:`Position.commit_request`),
for monitoring.

With a shuffle buffer (:mod:`~hepstream.models.shuffle`) a chunk can be read
and still wait to be learned: its offset is *pending*. A partition then
resumes from its oldest pending offset, and the records between it and the
partition's offset that are not pending were dealt with already: a restarted
trainer skips them without counting them again (:class:`Replay`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hepstream.kafka import commit_request

COUNTERS = ("events_trained", "chunks", "duplicate_chunks", "bad_messages", "dead_letters", "events_validation",
            "validation_chunks")


class Position:
    """Offsets and epoch starts per partition, the epoch, the chunk keys learned in it, and the counters.

    >>> position = Position("demo.events")
    >>> position.start_at({0: 5, 1: 0})
    >>> position.advance(0, 5)
    >>> position.learned(["k"], events=100)
    >>> snapshot = position.snapshot()
    >>> snapshot["offsets"], snapshot["seen_keys"], snapshot["counters"]["events_trained"]
    ({'0': 6, '1': 0}, ['k'], 100)
    >>> position.next_epoch()
    >>> position.offsets, position.epoch, position.seen_keys
    ({0: 5, 1: 0}, 1, set())
    >>> again = Position("demo.events")
    >>> again.restore(snapshot)
    >>> again.snapshot() == snapshot
    True
    """

    def __init__(self, topic: str):
        self.topic = topic
        self.offsets: dict[int, int] = {}
        self.epoch_start: dict[int, int] = {}
        self.epoch = 0
        self.seen_keys: set[str] = set()
        self.pending: dict[int, set[int]] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)

    def snapshot(self) -> dict:
        """The JSON-able state, with exactly the keys of ``trainer.json`` (partitions as strings, as JSON has them)."""
        snapshot = {"offsets": {str(p): o for p, o in sorted(self.offsets.items())}, "epoch": self.epoch,
                    "epoch_start": {str(p): o for p, o in self.epoch_start.items()},
                    "seen_keys": sorted(self.seen_keys), "counters": dict(self.counters)}
        pending = {str(p): sorted(o) for p, o in sorted(self.pending.items()) if o}
        return {**snapshot, "pending": pending} if pending else snapshot  # written only with a shuffle buffer

    def restore(self, state: dict) -> None:
        """Take a :meth:`snapshot`'s state; checkpoints older than epochs have no ``epoch`` nor ``epoch_start``,
        those older than the shuffle buffer no ``pending``."""
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.epoch_start = {int(p): int(o) for p, o in state.get("epoch_start", {}).items()}
        self.epoch = int(state.get("epoch", 0))
        self.seen_keys = set(state["seen_keys"])
        self.pending = {int(p): set(o) for p, o in state.get("pending", {}).items()}
        self.counters.update(state["counters"])

    @classmethod
    def merged(cls, topic: str, snapshots: Iterable[dict], counted_before: Mapping[str, int] | None = None) -> Position:
        """One position from the :meth:`snapshot`\\ s of data-parallel workers, each owning its own partitions.

        A version of the lineage must resume every worker where it stood, so
        offsets, epoch starts and chunk keys are taken side by side; the
        counters add up, on top of ``counted_before`` (the totals of the
        version the workers resumed from, since each worker counts from its
        own start). Workers share their epoch: the furthest one is kept. Keys
        of a snapshot other than a position's (a worker's metrics) are ignored.

        >>> one, two = Position("t"), Position("t")
        >>> one.start_at({0: 4}); two.start_at({1: 0})
        >>> one.advance(0, 9); one.learned(["a"], events=10); two.learned(["b"], events=5)
        >>> both = Position.merged("t", [one.snapshot(), two.snapshot()], {"events_trained": 100})
        >>> both.offsets, both.epoch_start, sorted(both.seen_keys), both.counters["events_trained"]
        ({0: 10, 1: 0}, {0: 4, 1: 0}, ['a', 'b'], 115)
        """
        merged = cls(topic)
        merged.counters.update(counted_before or {})
        for snapshot in snapshots:
            part = cls(topic)
            part.restore(snapshot)
            merged.offsets.update(part.offsets)
            merged.epoch_start.update(part.epoch_start)
            merged.epoch = max(merged.epoch, part.epoch)
            merged.seen_keys |= part.seen_keys
            merged.pending.update(part.pending)
            for name, count in part.counters.items():
                merged.counters[name] = merged.counters.get(name, 0) + count
        return merged

    def unstarted(self, partitions: Iterable[int]) -> list[int]:
        """Those of ``partitions`` with no offset yet: ``training.start`` decides where they begin."""
        return [p for p in partitions if p not in self.offsets]

    def start_at(self, starts: dict[int, int]) -> None:
        """Begin partitions at these offsets; the first epoch starts there too."""
        self.offsets.update(starts)
        for partition, offset in starts.items():
            self.epoch_start.setdefault(partition, offset)

    def own(self, partitions: Iterable[int]) -> None:
        """Keep only these partitions: a data-parallel worker resumes from a version holding every worker's."""
        mine = set(partitions)
        self.offsets = {p: o for p, o in self.offsets.items() if p in mine}
        self.epoch_start = {p: o for p, o in self.epoch_start.items() if p in mine}
        self.pending = {p: o for p, o in self.pending.items() if p in mine}

    def advance(self, partition: int, offset: int) -> None:
        """The record at ``offset`` is dealt with (learned, skipped, refused or pending): read on after it.

        Never backwards: a restarted trainer reads again from its oldest pending offset."""
        self.offsets[partition] = max(self.offsets.get(partition, 0), offset + 1)

    def hold(self, partition: int, offset: int) -> None:
        """The chunk at ``offset`` waits in the shuffle buffer: not learned, so a restart reads it again."""
        self.pending.setdefault(partition, set()).add(offset)

    def release(self, partition: int, offset: int) -> None:
        """The chunk at ``offset`` held by :meth:`hold` was learned."""
        self.pending[partition].discard(offset)

    def resume_offset(self, partition: int) -> int:
        """Where reading resumes: the oldest pending offset, else the partition's offset."""
        pending = self.pending.get(partition)
        return min(pending) if pending else self.offsets[partition]

    def count(self, counter: str) -> None:
        self.counters[counter] += 1

    def learned(self, keys: list[str], events: int) -> None:
        """Chunks with these keys were learned: a chunk sent again with one of them is a duplicate this epoch."""
        self.seen_keys.update(keys)
        self.counters["events_trained"] += events
        self.counters["chunks"] += len(keys)

    def held(self, keys: list[str], events: int) -> None:
        """Chunks with these keys went to the validation slice: consumed and counted, never learned; a copy
        sent again is a duplicate this epoch, as for a learned chunk."""
        self.seen_keys.update(keys)
        self.counters["events_validation"] += events
        self.counters["validation_chunks"] += len(keys)

    def reset_counters(self) -> None:
        """Count from now: a data-parallel worker reports its own counts, the coordinator adds the resumed totals."""
        self.counters = dict.fromkeys(COUNTERS, 0)

    def next_epoch(self) -> None:
        """Every partition was read to its end: go back to the epoch's start and forget the keys learned."""
        if any(self.pending.values()):
            raise RuntimeError(f"an epoch ends with chunks pending at {self.pending}: learn the shuffle buffer first")
        self.epoch += 1
        self.seen_keys.clear()
        for partition in self.offsets:
            self.offsets[partition] = self.epoch_start.get(partition, 0)

    def on_new_log(self) -> None:
        """The topic was made again, empty (the embedded broker keeps its log in memory): read every partition
        from offset 0 of the new log, keeping the keys and counters, so nothing learned is learned again."""
        self.offsets = dict.fromkeys(self.offsets, 0)
        self.epoch_start = dict.fromkeys(self.epoch_start, 0)
        self.pending = {}  # their records are gone with the old log; the producer sends them again

    def commit_request(self) -> dict:
        """Where each partition resumes, as Kafka commits offsets; taken right after a checkpoint, the checkpoint's."""
        return commit_request(self.topic, {p: self.resume_offset(p) for p in self.offsets})


class Replay:
    """Records a restarted trainer reads again only because an older chunk was still pending: each was learned,
    counted as a duplicate or refused before the checkpoint, so it is skipped without a count.

    Taken from the position as a trainer starts; forgotten once a new epoch rewinds the partitions.

    >>> position = Position("t")
    >>> position.start_at({0: 0}); position.advance(0, 4); position.hold(0, 2)
    >>> replay = Replay(position)
    >>> position.resume_offset(0), [replay.done(0, o) for o in range(5)]
    (2, [True, True, False, True, True])
    """

    def __init__(self, position: Position):
        self._ends = {p: position.offsets[p] for p, pending in position.pending.items() if pending}
        self._pending = {p: frozenset(position.pending[p]) for p in self._ends}

    def done(self, partition: int, offset: int) -> bool:
        return offset < self._ends.get(partition, 0) and offset not in self._pending[partition]

    def clear(self) -> None:
        self._ends, self._pending = {}, {}
