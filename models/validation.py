"""The validation slice: chunks never trained on, kept in a bounded reservoir per class to score every version.

A chunk belongs to the slice when the hash of its key falls below
``training.validation_fraction``: the same chunk is in the slice in every
process, after every restart and for every worker, so it is never learned,
not even by a trainer that resumes from an older checkpoint. The slice's
events are kept as the Arrow rows they arrived in (only the branches the
features read), not as feature matrices: each version scores them with its own
normalisation statistics, as the server would. A reservoir sample per class
(Vitter's algorithm R) bounds them to ``training.validation_events`` per class
whatever the stream's length; the reservoir is checkpointed in each version as
``validation.arrow`` (Arrow IPC, never pickle) and restored on resume.

>>> in_slice("f/Events/0-100", 0.0), in_slice("f/Events/0-100", 1.0)
(False, True)
>>> reservoir = Reservoir(capacity=3, seed=0)
>>> reservoir.add(pa.record_batch({"x": [1.0, 2.0, 3.0, 4.0, 5.0]}), np.array([1, 1, 1, 1, 0]))
>>> reservoir.counts(), reservoir.seen
({0: 1, 1: 3}, {0: 1, 1: 4})
>>> again = Reservoir.from_bytes(reservoir.to_bytes(), capacity=3, seed=0)
>>> again.counts(), again.seen
({0: 1, 1: 3}, {0: 1, 1: 4})
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hepstream.models.metrics import log_loss, multiclass_auc

LABEL_COLUMN = "__hepstream_label"  # the event's class, stored beside its branches
_SEEN_KEY = b"hepstream.validation.seen"  # schema metadata: events of each class the reservoir sampled from


def in_slice(key: str, fraction: float) -> bool:
    """Whether the chunk with this key is a validation chunk: a hash of the key, the same in every process."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


class Reservoir:
    """At most ``capacity`` events per class, a uniform sample of the slice's events of that class.

    Each class keeps an Arrow table of its sampled rows and the number of
    events it sampled from (``seen``); :meth:`merge` pools two reservoirs of
    disjoint streams (data-parallel workers) into one still bounded.
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.tables: dict[int, pa.Table] = {}
        self.seen: dict[int, int] = {}
        self.revision = 0  # grows at every change: scores of an unchanged reservoir can be kept
        self._rng = np.random.default_rng(seed)

    def __bool__(self) -> bool:
        return bool(self.seen)

    def counts(self) -> dict[int, int]:
        """Events kept per class."""
        return {label: self.tables[label].num_rows for label in sorted(self.tables)}

    def add(self, batch: pa.RecordBatch, labels: np.ndarray, branches: Sequence[str] | None = None) -> None:
        """Sample a validation chunk's events into the reservoir of their classes, keeping only ``branches``
        (those the features read; all when None)."""
        labels = np.asarray(labels, dtype=np.int64)
        rows = labelled_rows(batch, labels, batch.schema.names if branches is None else branches)
        table = pa.Table.from_batches([rows])
        for label in np.unique(labels):
            rows = table.take(np.flatnonzero(labels == label))
            self._sample(int(label), rows)

    def _sample(self, label: int, rows: pa.Table) -> None:
        """Algorithm R over ``rows``: each of the class's events so far is kept with equal probability."""
        kept = self.tables.get(label)
        seen = self.seen.get(label, 0)
        size = 0 if kept is None else kept.num_rows
        slots = list(range(size))  # indices into the kept rows followed by the new ones
        draws = self._rng.integers(0, seen + np.arange(1, rows.num_rows + 1))
        for i, draw in enumerate(draws):
            if len(slots) < self.capacity:
                slots.append(size + i)
            elif draw < self.capacity:
                slots[draw] = size + i
        pool = rows if kept is None else _concat([kept, rows])
        self.tables[label] = pool.take(np.asarray(slots, dtype=np.int64))
        self.seen[label] = seen + rows.num_rows
        self.revision += 1

    def merge(self, other: Reservoir) -> None:
        """Pool another reservoir's sample of a disjoint stream; each class stays within ``capacity``.

        A row stands for ``seen / kept`` events of its reservoir, so rows are
        drawn with that weight: the pooled sample represents both streams in
        proportion to the events each saw, not to the rows each kept.
        """
        for label, theirs in other.tables.items():
            ours = self.tables.get(label)
            seen = self.seen.get(label, 0) + other.seen[label]
            if ours is None:
                self.tables[label], self.seen[label] = theirs, other.seen[label]
                continue
            pool = _concat([ours, theirs])
            if pool.num_rows > self.capacity:
                weight = np.concatenate([np.full(ours.num_rows, self.seen[label] / max(ours.num_rows, 1)),
                                         np.full(theirs.num_rows, other.seen[label] / max(theirs.num_rows, 1))])
                chosen = self._rng.choice(pool.num_rows, self.capacity, replace=False, p=weight / weight.sum())
                pool = pool.take(np.sort(chosen))
            self.tables[label], self.seen[label] = pool, seen
        self.revision += 1

    def events(self) -> tuple[pa.RecordBatch, np.ndarray] | None:
        """Every kept event as one batch (branches only) and its labels; None when empty."""
        if not self.tables:
            return None
        table = _concat([self.tables[label] for label in sorted(self.tables)]).combine_chunks()
        labels = table.column(LABEL_COLUMN).to_numpy()
        table = table.drop_columns([LABEL_COLUMN])
        batches = table.to_batches()
        return (batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)), labels

    def to_bytes(self) -> bytes:
        """The reservoir as one Arrow IPC stream (every kept row with its class), for ``validation.arrow``."""
        table = _concat([self.tables[label] for label in sorted(self.tables)]) if self.tables else pa.table({})
        table = table.replace_schema_metadata({_SEEN_KEY: json.dumps({str(k): v for k, v in self.seen.items()})})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_bytes(cls, data: bytes, capacity: int, seed: int = 0) -> Reservoir:
        """Read :meth:`to_bytes`'s stream back; a smaller ``capacity`` than before keeps the first rows."""
        table = pa.ipc.open_stream(data).read_all()
        reservoir = cls(capacity, seed)
        seen = json.loads((table.schema.metadata or {}).get(_SEEN_KEY, b"{}"))
        table = table.replace_schema_metadata(None)
        for label, count in seen.items():
            label = int(label)
            rows = table.filter(pc.equal(table.column(LABEL_COLUMN), label))
            reservoir.tables[label] = rows.slice(0, capacity)
            reservoir.seen[label] = int(count)
        return reservoir


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive")


def labelled_rows(batch: pa.RecordBatch, labels: np.ndarray, branches: Sequence[str]) -> pa.RecordBatch:
    """The branches the features read, and the class of each event: what the reservoir keeps of a chunk."""
    names = [name for name in branches if batch.schema.get_field_index(name) >= 0]
    columns = [batch.column(name) for name in names] + [pa.array(labels)]
    return pa.RecordBatch.from_arrays(columns, names=[*names, LABEL_COLUMN])


def score(model, reservoir: Reservoir) -> dict | None:
    """A model (anything with ``predict(batch)``, as :class:`~hepstream.models.store.LoadedModel`) on the
    reservoir: AUC (None while a class is missing), mean log-loss, events per class; None when empty."""
    events = reservoir.events()
    if events is None:
        return None
    batch, labels = events
    scores = np.asarray(model.predict(batch), dtype=np.float64)
    return {"auc": multiclass_auc(scores, labels), "log_loss": float(log_loss(scores, labels).mean()),
            "events": int(len(labels)), "per_class": {str(k): v for k, v in reservoir.counts().items()}}


def stored_reservoir(store, version: int | None, capacity: int, seed: int = 0) -> Reservoir:
    """The reservoir checkpointed in a version of ``store`` (a ModelStore), or an empty one when it has none."""
    data = None if version is None else store.read_file(version, "validation.arrow")
    return Reservoir(capacity, seed) if data is None else Reservoir.from_bytes(data, capacity, seed)
