"""Where a trainer stands in its topic: the offsets, epoch and chunk keys checkpointed with its model.

Offsets are the trainer's own state, never Kafka's auto-commit (bytewax's
discipline): :meth:`Position.snapshot` goes into the same store version as
the model (``trainer.json``), and a restart :meth:`~Position.restore`\\ s it.
An offset is the *next* offset to read on its partition, Kafka's convention,
so resuming seeks there and neither skips nor repeats a record. Kafka is
told of the offsets only after a checkpoint (:meth:`Position.commit_request`),
for monitoring.
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
        self.counters = dict.fromkeys(COUNTERS, 0)

    def snapshot(self) -> dict:
        """The JSON-able state, with exactly the keys of ``trainer.json`` (partitions as strings, as JSON has them)."""
        return {"offsets": {str(p): o for p, o in sorted(self.offsets.items())}, "epoch": self.epoch,
                "epoch_start": {str(p): o for p, o in self.epoch_start.items()},
                "seen_keys": sorted(self.seen_keys), "counters": dict(self.counters)}

    def restore(self, state: dict) -> None:
        """Take a :meth:`snapshot`'s state; checkpoints older than epochs have no ``epoch`` nor ``epoch_start``."""
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.epoch_start = {int(p): int(o) for p, o in state.get("epoch_start", {}).items()}
        self.epoch = int(state.get("epoch", 0))
        self.seen_keys = set(state["seen_keys"])
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

    def advance(self, partition: int, offset: int) -> None:
        """The record at ``offset`` is dealt with (learned, skipped or refused): read on after it."""
        self.offsets[partition] = offset + 1

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
        self.epoch += 1
        self.seen_keys.clear()
        for partition in self.offsets:
            self.offsets[partition] = self.epoch_start.get(partition, 0)

    def on_new_log(self) -> None:
        """The topic was made again, empty (the embedded broker keeps its log in memory): read every partition
        from offset 0 of the new log, keeping the keys and counters, so nothing learned is learned again."""
        self.offsets = dict.fromkeys(self.offsets, 0)
        self.epoch_start = dict.fromkeys(self.epoch_start, 0)

    def commit_request(self) -> dict:
        """The offsets as Kafka commits them; taken right after a checkpoint, they are the checkpoint's."""
        return commit_request(self.topic, self.offsets)
