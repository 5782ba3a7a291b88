"""One chunk checked and its features extracted, and a group's shuffled rows laid out: the work of preparing.

Functions of a feature pipeline and the class count only, without torch or the learner, so that a
preparation worker process (:mod:`~hepstream.models.prepare_worker`) runs exactly what the trainer's own
thread runs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from hepstream.models.features import Extracted, FeatureError, FeaturePipeline


class Prepared:
    """One chunk, checked and ready to learn: extracted features, labels and optional weights."""

    __slots__ = ("features", "labels", "weights")

    def __init__(self, features: Extracted, labels: np.ndarray, weights: np.ndarray | None):
        self.features, self.labels, self.weights = features, labels, weights


def prepare_chunk(features: FeaturePipeline, classes: int, batch: pa.RecordBatch, labels: np.ndarray) -> Prepared:
    """Check one batch and its labels and extract its features; raises FeatureError naming the branch at fault.

    A function of the pipeline and the class count only, so a preparation worker process runs it too.
    """
    return Prepared(features.extract(batch), checked_labels(labels, classes), features.weights(batch))


def checked_labels(labels: np.ndarray, classes: int) -> np.ndarray:
    """Labels as int64 class indices; raises FeatureError unless each is a whole number 0 .. classes-1.

    The trainer applies it alone to a held-out chunk a preparation worker has checked already.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise FeatureError("label", "labels must be whole numbers 0 .. classes-1")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise FeatureError("label", f"labels must lie in 0 .. {classes - 1}, got {labels.min()} .. {labels.max()}")
    return labels


def class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Events of each class among ``labels`` (two classes at least), as class weights count them."""
    width = max(classes, 2)
    return np.bincount(labels, minlength=width)[:width]


def weighted(chunks: list[Prepared], per_class: np.ndarray) -> list[Prepared]:
    """The chunks with each event's weight multiplied by its class's weight (``training.class_weights``)."""
    return [Prepared(c.features, c.labels, per_class[c.labels] * (1.0 if c.weights is None else c.weights))
            for c in chunks]


class Rows(NamedTuple):
    """Where a group's shuffled rows go: features, labels and weights, each of the group's length."""

    x: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None


def lay_out(features: FeaturePipeline, prepared: list[Prepared], order: np.ndarray, out: Rows | None = None) -> Rows:
    """The chunks' feature matrix (with ``features``' statistics), labels and weights, rows taken in ``order``.

    Into ``out`` when given (a preparation worker writes a shared memory block), else into new arrays.
    """
    x = np.zeros((len(order), features.n_features), np.float32)
    start = 0
    for chunk in prepared:  # each chunk's rows written in place: no matrix per chunk to concatenate
        features.matrix(chunk.features, out=x[start : start + chunk.features.events])
        start += chunk.features.events
    y = np.concatenate([chunk.labels for chunk in prepared])
    weights = None
    if any(chunk.weights is not None for chunk in prepared):
        weights = np.concatenate([chunk.weights for chunk in prepared])
    out = out or Rows(None, None, None)
    # np.take, not x[order]: the same rows, in less time for a group's matrix (docs/training.md).
    return Rows(np.take(x, order, axis=0, out=out.x), np.take(y, order, out=out.labels),
                None if weights is None else np.take(weights, order, out=out.weights))
