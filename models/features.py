"""Events in branch space to a dense float32 matrix, the same way in training and serving.

Jagged collections (``Muon_pt``, ``Muon_eta``, ...) are cut or padded to a
fixed number of objects by offset arithmetic on the Arrow list buffers, with a
0/1 mask column per slot, so there is no per-event Python loop. Normalisation
is a running mean and variance (Chan et al.'s parallel update), kept in the
pipeline's state so a checkpoint carries it and the server applies exactly the
statistics the model was trained with.

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

import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig


class FeatureError(ValueError):
    """Events that cannot be turned into features; ``branch`` names the branch at fault."""

    def __init__(self, branch: str, message: str):
        super().__init__(f"branch {branch!r}: {message}")
        self.branch = branch


@dataclass(frozen=True)
class BranchSpec:
    name: str
    jagged: bool


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise FeatureError(name, f"missing; the batch has {sorted(batch.schema.names)}")
    return batch.column(index)


def _flat_values(batch: pa.RecordBatch, name: str) -> np.ndarray:
    column = _column(batch, name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise FeatureError(name, f"expected one number per event, got Arrow type {column.type}")
    return column.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)


def _jagged_parts(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets relative to the first event, flat values) of a list column."""
    column = _column(batch, name)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise FeatureError(name, f"expected a list of numbers per event, got Arrow type {column.type}")
    value_type = column.type.value_type
    # All-empty lists (no object in any event) come out of JSON as list<null>.
    empty = pa.types.is_null(value_type) and len(column.values) == 0
    if not (empty or pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise FeatureError(name, f"expected numbers inside the list, got {value_type}")
    if column.null_count:
        raise FeatureError(name, f"{column.null_count} event(s) have a null list")
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0] : offsets[-1]].astype(np.float32, copy=False)
    return offsets - offsets[0], values


def pad(offsets: np.ndarray, values: np.ndarray, length: int, order: np.ndarray | None = None):
    """First ``length`` objects of each event as an ``(n, length)`` array, zero-padded, and its mask.

    ``order`` is a permutation of ``values`` that puts each event's objects in
    the wanted order (see :func:`descending_order`).

    >>> padded, mask = pad(np.array([0, 3, 3, 4]), np.array([1., 2., 3., 4.]), 2)
    >>> padded.tolist(), mask.tolist()
    ([[1.0, 2.0], [0.0, 0.0], [4.0, 0.0]], [[True, True], [False, False], [True, False]])
    """
    counts = np.diff(offsets)
    slots = np.arange(length)
    mask = slots[None, :] < counts[:, None]
    index = (offsets[:-1, None] + slots[None, :])[mask]
    if order is not None:
        index = order[index]
    padded = np.zeros(mask.shape, dtype=np.float32)
    padded[mask] = values[index]
    return padded, mask


def descending_order(offsets: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Permutation that sorts objects by ``key`` descending within each event, keeping events apart."""
    event = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return np.lexsort((-key, event))


class RawFeatures(NamedTuple):
    values: np.ndarray
    valid: np.ndarray
    masks: np.ndarray


class RunningMoments:
    """Per-column mean and variance over every value seen, merged batch by batch."""

    def __init__(self, width: int):
        self.count = np.zeros(width, dtype=np.float64)
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    def update(self, values: np.ndarray, valid: np.ndarray) -> None:
        n = valid.sum(axis=0).astype(np.float64)
        safe_n = np.maximum(n, 1.0)
        masked = np.where(valid, values, 0.0)
        mean = masked.sum(axis=0) / safe_n
        m2 = (np.where(valid, values - mean, 0.0) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(total > 0, n / total, 0.0)
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2 + delta**2 * self.count * weight
        self.count = total

    @property
    def scale(self) -> np.ndarray:
        variance = np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), 1.0)
        return np.sqrt(np.maximum(variance, 1e-12)).astype(np.float32)


class FeaturePipeline:
    """Branch-space events to model inputs: flat branches, padded collections with masks, normalised.

    Column order: the flat branches; then each collection's branches, each
    padded to ``length`` slots; then one mask column per slot of each
    collection.
    """

    def __init__(self, spec: FeaturesConfig):
        self.spec = spec
        widths = [len(spec.flat)]
        widths += [len(c.branches) * c.length for c in spec.jagged]
        self._value_columns = sum(widths)
        self.n_features = self._value_columns + sum(c.length for c in spec.jagged)
        self.moments = RunningMoments(self._value_columns)

    @property
    def inputs(self) -> list[BranchSpec]:
        specs = [BranchSpec(name, False) for name in self.spec.flat]
        for collection in self.spec.jagged:
            specs += [BranchSpec(name, True) for name in collection.branches]
        return specs

    def raw(self, batch: pa.RecordBatch) -> RawFeatures:
        """Unnormalised values, which of them are real objects (not padding), and the slot masks."""
        n = batch.num_rows
        columns = [_flat_values(batch, name)[:, None] for name in self.spec.flat]
        valid = [np.ones((n, len(self.spec.flat)), dtype=bool)]
        masks = []
        for collection in self.spec.jagged:
            parts = {name: _jagged_parts(batch, name) for name in collection.branches}
            offsets = parts[collection.branches[0]][0]
            for name, (other, _) in parts.items():
                if not np.array_equal(other, offsets):
                    raise FeatureError(name, f"object counts differ from {collection.branches[0]!r}")
            order = None
            if collection.sort_by is not None:
                order = descending_order(offsets, parts[collection.sort_by][1])
            mask = None
            for name in collection.branches:
                padded, mask = pad(offsets, parts[name][1], collection.length, order)
                columns.append(padded)
                valid.append(mask)
            masks.append(mask)
        values = np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), np.float32)
        raw = RawFeatures(values, np.concatenate(valid, axis=1), np.concatenate(masks, axis=1) if masks else np.zeros((n, 0)))
        self._check_finite(raw.values)
        return raw

    def learn(self, raw: RawFeatures) -> None:
        """Absorb a training batch into the normalisation statistics (padding slots excluded)."""
        if self.spec.normalize:
            self.moments.update(raw.values, raw.valid)

    def normalise(self, raw: RawFeatures) -> np.ndarray:
        values = raw.values
        if self.spec.normalize:
            values = (values - self.moments.mean.astype(np.float32)) / self.moments.scale
            values = np.where(raw.valid, values, 0.0)
        return np.concatenate([values, raw.masks.astype(np.float32)], axis=1).astype(np.float32, copy=False)

    def transform(self, batch: pa.RecordBatch) -> np.ndarray:
        """The model's input matrix for a batch of events, with the statistics learned so far."""
        return self.normalise(self.raw(batch))

    def _check_finite(self, values: np.ndarray) -> None:
        bad = ~np.isfinite(values)
        if bad.any():
            column = int(np.argwhere(bad.any(axis=0))[0][0])
            # Jagged columns are laid out branch by branch, slot by slot.
            names = self.spec.flat + [
                name for c in self.spec.jagged for name in c.branches for _ in range(c.length)
            ]
            raise FeatureError(names[column], "contains NaN or infinite values")

    def state_dict(self) -> dict:
        return {"count": self.moments.count.tolist(), "mean": self.moments.mean.tolist(), "m2": self.moments.m2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("count", "mean", "m2"):
            array = np.asarray(state[key], dtype=np.float64)
            if array.shape != (self._value_columns,):
                raise ValueError(f"feature state {key!r} has shape {array.shape}, expected ({self._value_columns},)")
            setattr(self.moments, key, array)
