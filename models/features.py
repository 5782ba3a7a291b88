"""Events in branch space to a dense float32 matrix, the same way in training and serving.

Jagged collections (``Muon_pt``, ``Muon_eta``, ...) are cut or padded to a
fixed number of objects by offset arithmetic on the Arrow list buffers, with a
0/1 mask column per slot, so there is no per-event Python loop: each
collection computes once where its kept objects land in the output matrix,
then every branch of it is one gather and one scatter. Derived branches are
expressions of :mod:`hepstream.expressions`, computed column-wise first.
Normalisation is a running mean and variance (Chan et al.'s parallel update),
kept in the pipeline's state so a checkpoint carries it and the server applies
exactly the statistics the model was trained with.

>>> import pyarrow as pa
>>> from hepstream.config import FeaturesConfig, JaggedFeature
>>> spec = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt"], length=2)], normalize=False)
>>> batch = pa.record_batch({"MET_pt": [10.0, 20.0], "Muon_pt": [[50.0, 30.0, 5.0], []]})
>>> FeaturePipeline(spec).transform(batch).tolist()
[[10.0, 50.0, 30.0, 1.0, 1.0], [20.0, 0.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import awkward as ak
import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig
from hepstream.expressions import Expression, ExpressionError


class FeatureError(ValueError):
    """Events that cannot be turned into features; ``branch`` names the branch at fault."""

    def __init__(self, branch: str, message: str):
        super().__init__(f"branch {branch!r}: {message}")
        self.branch = branch


@dataclass(frozen=True)
class Jagged:
    """One value per object of each event: ``values[offsets[i]:offsets[i+1]]`` belong to event ``i``."""

    offsets: np.ndarray
    values: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_awkward(self) -> ak.Array:
        content = ak.contents.NumpyArray(self.values)
        return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(self.offsets.astype(np.int64)), content))

    @classmethod
    def from_awkward(cls, array: ak.Array) -> Jagged:
        counts = ak.to_numpy(ak.num(array, axis=1))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(offsets, ak.to_numpy(ak.flatten(array, axis=1)))


def _as_awkward(value: np.ndarray | Jagged) -> ak.Array:
    return value.to_awkward() if isinstance(value, Jagged) else ak.Array(value)


@dataclass(frozen=True)
class BranchSpec:
    name: str
    jagged: bool


@dataclass(frozen=True)
class FeatureLayout:
    """Where things are in the feature matrix, for models that treat collections as sets.

    Columns: ``flat`` flat features; then for each collection ``(branches,
    length)`` its branches one after the other, each over ``length`` slots;
    then the collections' masks, ``length`` columns each.
    """

    flat: int
    collections: tuple[tuple[int, int], ...]

    @property
    def value_columns(self) -> int:
        return self.flat + sum(b * n for b, n in self.collections)

    @property
    def n_features(self) -> int:
        return self.value_columns + sum(n for _, n in self.collections)

    def blocks(self):
        """``(value_start, mask_start, branches, length)`` of each collection."""
        value, mask = self.flat, self.value_columns
        for branches, length in self.collections:
            yield value, mask, branches, length
            value += branches * length
            mask += length


def _numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


class _Columns:
    """The batch's branches as numpy (flat) or :class:`Jagged`, derived branches computed on first use."""

    def __init__(self, batch: pa.RecordBatch, derived: dict[str, Expression]):
        self.batch = batch
        self.derived = derived
        self.cache: dict[str, np.ndarray | Jagged] = {}

    def __getitem__(self, name: str) -> np.ndarray | Jagged:
        if name not in self.cache:
            self.cache[name] = self._derive(name) if name in self.derived else self._read(name)
        return self.cache[name]

    def _derive(self, name: str):
        expression = self.derived[name]
        inputs = {branch: _as_awkward(self[branch]) for branch in expression.names}
        try:
            # A feature must be finite: min/max/mean over no object count as 0, not NaN.
            value = expression.evaluate(inputs, empty=0.0)
        except ExpressionError as error:
            raise FeatureError(name, str(error)) from None
        if not isinstance(value, ak.Array):
            return np.full(self.batch.num_rows, value, dtype=np.float32)
        if value.ndim > 1:
            return Jagged.from_awkward(value)
        return ak.to_numpy(value)

    def _read(self, name: str):
        index = self.batch.schema.get_field_index(name)
        if index < 0:
            raise FeatureError(name, f"missing; the batch has {sorted(self.batch.schema.names)}")
        column = self.batch.column(index)
        if _numeric(column.type):
            if column.null_count:
                raise FeatureError(name, f"{column.null_count} event(s) have no value")
            return column.to_numpy(zero_copy_only=False)
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise FeatureError(name, f"expected numbers or lists of numbers per event, got Arrow type {column.type}")
        value_type = column.type.value_type
        # All-empty lists (no object in any event) come out of JSON as list<null>.
        empty = pa.types.is_null(value_type) and len(column.values) == 0
        if not (empty or _numeric(value_type)):
            raise FeatureError(name, f"expected numbers inside the list, got {value_type}")
        if column.null_count:
            raise FeatureError(name, f"{column.null_count} event(s) have a null list")
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        return Jagged(offsets - offsets[0], values.astype(np.float32, copy=False))

    def flat(self, name: str) -> np.ndarray:
        value = self[name]
        if isinstance(value, Jagged):
            raise FeatureError(name, "expected one number per event, got a list per event")
        return value

    def jagged(self, name: str) -> Jagged:
        value = self[name]
        if not isinstance(value, Jagged):
            raise FeatureError(name, "expected a list of numbers per event, got one number per event")
        return value


def _checked(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise FeatureError(name, "contains NaN or infinite values")
    return values


def is_descending(offsets: np.ndarray, key: np.ndarray) -> bool:
    """Whether ``key`` already decreases within every event (NanoAOD collections come sorted by pt)."""
    if key.size < 2:
        return True
    rising = np.diff(key) > 0  # rising[k]: the key goes up from object k to k + 1 ...
    starts = offsets[1:-1]
    rising[starts[(starts > 0) & (starts < key.size)] - 1] = False  # ... which is allowed where an event starts
    return not rising.any()


def descending_order(offsets: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Permutation that sorts objects by ``key`` descending within each event, keeping events apart."""
    event = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return np.lexsort((-key, event))


def slot_targets(offsets: np.ndarray, length: int,
                 row_width: int) -> tuple[np.ndarray | slice, np.ndarray, np.ndarray]:
    """Where the first ``length`` objects of each event go: their index in the flat values, the flat index
    of their cell in a row-major matrix ``row_width`` wide (relative to the collection's first column), and
    their slot. When no event has more than ``length`` objects, the index is ``slice(None)``: all, in order,
    which selects without a copy.

    >>> source, target, slot = slot_targets(np.array([0, 3, 3, 4]), 2, 10)
    >>> source.tolist(), target.tolist(), slot.tolist()
    ([0, 1, 3], [0, 1, 20], [0, 1, 0])
    >>> slot_targets(np.array([0, 2, 2, 3]), 2, 10)[0]
    slice(None, None, None)
    """
    counts = np.diff(offsets)
    event = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), counts)
    slot = np.arange(offsets[-1], dtype=np.int64) - offsets[event]
    if not counts.size or counts.max() <= length:
        return slice(None), event * row_width + slot, slot
    kept = np.flatnonzero(slot < length)
    slot, event = slot[kept], event[kept]
    return kept, event * row_width + slot, slot


class Objects(NamedTuple):
    """One collection's kept objects: cell of each in the matrix, its slot, and each branch's values."""

    target: np.ndarray
    slot: np.ndarray
    values: list[np.ndarray]


class Extracted(NamedTuple):
    """A batch's feature values before they are laid out: per flat feature one array, per collection its
    kept objects. Statistics and the matrix are both computed from it with 1-D operations only."""

    events: int
    flat: list[np.ndarray]
    collections: list[Objects]
    jagged_inputs: frozenset[str] = frozenset()  # branches found jagged, for the state of a pipeline elsewhere


class RunningMoments:
    """Per-column count, mean and sum of squared deviations over every real value seen (Chan et al.'s merge)."""

    def __init__(self, width: int):
        self.count = np.zeros(width, dtype=np.float64)
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    def merge(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Absorb a batch given per column its count, mean and sum of squared deviations from that mean.

        Each batch's moments are taken around its own mean, so they need no state of the running ones: a
        preparation worker computes them alone (:mod:`~hepstream.models.prepare_pool`), and merging them in
        message order gives the same statistics, bit for bit, wherever they were computed.
        """
        total = self.count + count
        weight = np.divide(count, total, out=np.zeros_like(total), where=total > 0)
        delta = mean - self.mean
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2 + delta**2 * self.count * weight
        self.count = total

    @property
    def scale(self) -> np.ndarray:
        variance = np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), 1.0)
        return np.sqrt(np.maximum(variance, 1e-12)).astype(np.float32)


class FeaturePipeline:
    """Branch-space events to model inputs: flat branches, padded collections with masks, normalised.

    ``extract`` checks a batch and picks its values, ``learn`` updates the
    statistics from them, ``matrix`` lays them out (standardised);
    ``transform`` is ``extract`` then ``matrix``, the read-only path the server runs.
    """

    def __init__(self, spec: FeaturesConfig):
        self.spec = spec
        self._derived = {d.name: Expression.parse(d.expr) for d in spec.derived}
        self.layout = FeatureLayout(len(spec.flat), tuple((len(c.branches), c.length) for c in spec.jagged))
        self.n_features = self.layout.n_features
        self.moments = RunningMoments(self.layout.value_columns)
        self._jagged_sources = {b for c in spec.jagged for b in c.branches if b not in self._derived}

    @property
    def feature_names(self) -> list[str]:
        names = list(self.spec.flat)
        for c in self.spec.jagged:
            names += [f"{b}[{i}]" for b in c.branches for i in range(c.length)]
        for c in self.spec.jagged:
            names += [f"{c.branches[0].split('_')[0]}_mask[{i}]" for i in range(c.length)]
        return names

    @property
    def inputs(self) -> list[BranchSpec]:
        """Branches a client sends; what derived branches read is flat unless seen jagged in training."""
        return [BranchSpec(name, name in self._jagged_sources)
                for name in self.spec.branches if name != self.spec.weight]

    def extract(self, batch: pa.RecordBatch) -> Extracted:
        """Check a batch and pick its feature values; raises :class:`FeatureError` naming the branch at fault."""
        columns = _Columns(batch, self._derived)
        flat = [_checked(name, columns.flat(name)) for name in self.spec.flat]
        collections = []
        for collection, (_, _, _, length) in zip(self.spec.jagged, self.layout.blocks()):
            first = columns.jagged(collection.branches[0])
            for name in collection.branches[1:]:
                if not np.array_equal(columns.jagged(name).offsets, first.offsets):
                    raise FeatureError(name, f"object counts differ from {collection.branches[0]!r}")
            source, target, slot = slot_targets(first.offsets, length, self.layout.n_features)
            if collection.sort_by is not None:
                key = columns.jagged(collection.sort_by).values
                if not is_descending(first.offsets, key):
                    source = descending_order(first.offsets, key)[source]
            values = [_checked(name, columns.jagged(name).values)[source] for name in collection.branches]
            collections.append(Objects(target, slot, values))
        seen = frozenset(name for name, value in columns.cache.items() if isinstance(value, Jagged))
        self.note_jagged(seen)
        return Extracted(batch.num_rows, flat, collections, seen)

    def note_jagged(self, seen: frozenset[str]) -> None:
        """Remember branches seen jagged (so a client sends them as lists), also when another process extracted."""
        if not seen <= self._jagged_sources:  # a new set, not an update: the read-ahead thread extracts while
            self._jagged_sources = self._jagged_sources | seen  # the trainer thread may be saving the state

    def learn(self, extracted: Extracted) -> None:
        """Absorb a training batch into the normalisation statistics (padding slots excluded)."""
        moments = self.batch_moments(extracted)
        if moments is not None:
            self.moments.merge(*moments)

    def batch_moments(self, extracted: Extracted) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per column the batch's count, mean and squared deviations from that mean (padding slots excluded);
        None when ``features.normalize`` is off. Reads no statistics, so any process computes them."""
        if not self.spec.normalize:
            return None
        width = self.layout.value_columns
        count, mean, m2 = np.zeros(width), np.zeros(width), np.zeros(width)
        for column, values in enumerate(extracted.flat):
            count[column] = len(values)
            mean[column] = values.sum(dtype=np.float64) / max(len(values), 1)
            shifted = values - mean[column]
            m2[column] = shifted @ shifted
        for objects, (start, _, _, length) in zip(extracted.collections, self.layout.blocks()):
            per_slot = np.bincount(objects.slot, minlength=length)
            for j, values in enumerate(objects.values):
                cells = slice(start + j * length, start + (j + 1) * length)
                count[cells] = per_slot
                mean[cells] = np.bincount(objects.slot, values, minlength=length) / np.maximum(per_slot, 1)
                shifted = values - mean[cells][objects.slot]
                m2[cells] = np.bincount(objects.slot, shifted * shifted, minlength=length)
        return count, mean, m2

    def matrix(self, extracted: Extracted, normalise: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """The feature matrix: values (standardised when ``normalise`` and configured), padding zero, masks 0/1.

        ``out``, when given, is a zeroed float32 block of rows to fill (a group's matrix is laid out in one
        array without a copy per chunk).
        """
        layout = self.layout
        if out is None:
            out = np.zeros((extracted.events, layout.n_features), dtype=np.float32)
        shift = np.zeros(layout.value_columns, dtype=np.float32)
        factor = np.ones(layout.value_columns, dtype=np.float32)
        if normalise and self.spec.normalize:
            factor = 1.0 / self.moments.scale
            shift = (-self.moments.mean * factor).astype(np.float32)
        for column, values in enumerate(extracted.flat):
            out[:, column] = values * factor[column] + shift[column]
        cells = out.reshape(-1)
        for objects, (start, mask_start, _, length) in zip(extracted.collections, layout.blocks()):
            for j, values in enumerate(objects.values):
                first = start + j * length
                slot_factor, slot_shift = factor[first : first + length], shift[first : first + length]
                cells[first:][objects.target] = values * slot_factor[objects.slot] + slot_shift[objects.slot]
            cells[mask_start:][objects.target] = 1.0
        return out

    def raw(self, batch: pa.RecordBatch) -> np.ndarray:
        """Unnormalised features of a batch, as the exported models take them."""
        return self.matrix(self.extract(batch), normalise=False)

    def transform(self, batch: pa.RecordBatch) -> np.ndarray:
        """The model's input matrix for a batch of events, with the statistics learned so far."""
        return self.matrix(self.extract(batch))

    def weights(self, batch: pa.RecordBatch) -> np.ndarray | None:
        """Per-event training weights from ``features.weight``; None when no weight branch is configured."""
        if self.spec.weight is None:
            return None
        weights = _checked(self.spec.weight, _Columns(batch, self._derived).flat(self.spec.weight))
        if (weights < 0).any():
            raise FeatureError(self.spec.weight, "negative event weights are not supported")
        return weights.astype(np.float32, copy=False)

    def state_dict(self) -> dict:
        return {"count": self.moments.count.tolist(), "mean": self.moments.mean.tolist(),
                "m2": self.moments.m2.tolist(), "jagged_sources": sorted(self._jagged_sources)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("count", "mean", "m2"):
            array = np.asarray(state[key], dtype=np.float64)
            if array.shape != (self.layout.value_columns,):
                raise ValueError(f"feature state {key!r} has shape {array.shape}, "
                                 f"expected ({self.layout.value_columns},)")
            setattr(self.moments, key, array)
        self._jagged_sources |= set(state.get("jagged_sources", ()))
