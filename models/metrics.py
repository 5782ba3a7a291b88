"""Prequential (test-then-train) metrics: each batch is scored before the model learns from it.

The scores a model gives to events it has not yet trained on are an honest
estimate of how it does on new data, with no held-out set to maintain. Log-loss
and accuracy run over the whole stream and over a sliding window of the most
recent events; the windowed AUC is exact on the window, the overall AUC comes
from per-class score histograms (1000 bins), so it needs no memory of events.
Multi-class scores are ``(n, classes)`` probabilities; their AUC is the mean of
the one-vs-rest AUCs.

>>> m = PrequentialMetrics(window=100)
>>> losses = m.update(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))
>>> m.summary()["auc"], m.summary()["accuracy"], m.summary()["overall_auc"]
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = 1e-7
_BINS = 1000


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (what scipy's ``rankdata`` gives, without scipy's import)."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1])
    ends = np.append(starts[1:], len(scores))
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); None when one class is absent.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    u = _average_ranks(np.asarray(scores))[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def _one_vs_rest(scores: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(score, is-positive) pairs: one for binary scores, one per class for ``(n, classes)`` scores."""
    if scores.ndim == 1:
        return [(scores, labels == 1)]
    return [(scores[:, k], labels == k) for k in range(scores.shape[1])]


def multiclass_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    aucs = [a for a in (roc_auc(s, y) for s, y in _one_vs_rest(scores, labels)) if a is not None]
    return float(np.mean(aucs)) if aucs else None


def log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-event log-loss of binary probabilities ``(n,)`` or class probabilities ``(n, classes)``."""
    if scores.ndim == 2:
        return -np.log(np.clip(scores[np.arange(len(labels)), labels.astype(np.int64)], _EPS, 1.0))
    p = np.clip(scores, _EPS, 1 - _EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def predicted_class(scores: np.ndarray) -> np.ndarray:
    return scores.argmax(axis=1) if scores.ndim == 2 else (scores >= 0.5).astype(np.int64)


class HistogramAUC:
    """AUC over the whole stream from score histograms per class: constant memory, exact to a bin."""

    def __init__(self, curves: int):
        self.positive = np.zeros((curves, _BINS), dtype=np.float64)
        self.negative = np.zeros((curves, _BINS), dtype=np.float64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        for k, (s, y) in enumerate(_one_vs_rest(scores, labels)):
            bins = np.clip((s * _BINS).astype(np.int64), 0, _BINS - 1)
            self.positive[k] += np.bincount(bins[y], minlength=_BINS)
            self.negative[k] += np.bincount(bins[~y], minlength=_BINS)

    def value(self) -> float | None:
        aucs = []
        for pos, neg in zip(self.positive, self.negative):
            if pos.sum() and neg.sum():
                below = np.cumsum(neg) - neg  # negatives in lower bins
                aucs.append(float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum())))
        return float(np.mean(aucs)) if aucs else None


class PrequentialMetrics:
    def __init__(self, window: int = 20_000, classes: int = 2):
        self.window = window
        self.classes = classes
        shape = (window,) if classes == 2 else (window, classes)
        self._scores = np.zeros(shape, dtype=np.float32)
        self._labels = np.zeros(window, dtype=np.int64)
        self._filled = 0
        self._next = 0
        self.events = 0
        self.loss_sum = 0.0
        self.correct = 0
        self._overall_auc = HistogramAUC(1 if classes == 2 else classes)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Record a scored batch; returns the per-event losses (for the drift detector)."""
        labels = np.asarray(labels).astype(np.int64)
        losses = log_loss(scores, labels)
        self.events += len(labels)
        self.loss_sum += float(losses.sum())
        self.correct += int((predicted_class(scores) == labels).sum())
        self._overall_auc.update(scores, labels)
        keep = slice(max(0, len(labels) - self.window), None)
        scores, labels = scores[keep], labels[keep]
        positions = (self._next + np.arange(len(labels))) % self.window
        self._scores[positions] = scores
        self._labels[positions] = labels
        self._next = (self._next + len(labels)) % self.window
        self._filled = min(self.window, self._filled + len(labels))
        return losses

    @classmethod
    def merged(cls, parts: Sequence[PrequentialMetrics]) -> PrequentialMetrics:
        """Several learners' metrics as one (data-parallel workers): the stream sums add up, and the window
        holds an equal share of each part's latest events."""
        merged = cls(parts[0].window, parts[0].classes)
        share = merged.window // len(parts)
        for part in parts:
            recent = (part._next - part._filled + np.arange(part._filled)) % part.window  # oldest first
            recent = recent[max(0, len(recent) - share):]
            merged.update(part._scores[recent], part._labels[recent])
        merged.events = sum(p.events for p in parts)
        merged.loss_sum = sum(p.loss_sum for p in parts)
        merged.correct = sum(p.correct for p in parts)
        merged._overall_auc.positive = sum(p._overall_auc.positive for p in parts)
        merged._overall_auc.negative = sum(p._overall_auc.negative for p in parts)
        return merged

    def summary(self) -> dict:
        if self.events == 0:
            return {"events": 0}
        scores, labels = self._scores[: self._filled], self._labels[: self._filled]
        return {
            "events": self.events,
            "auc": multiclass_auc(scores, labels),
            "overall_auc": self._overall_auc.value(),
            "log_loss": self.loss_sum / self.events,
            "accuracy": self.correct / self.events,
            "window_events": self._filled,
            "window_log_loss": float(log_loss(scores, labels).mean()),
            "window_accuracy": float((predicted_class(scores) == labels).mean()),
        }
