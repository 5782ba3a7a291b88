"""Prequential (test-then-train) metrics: each batch is scored before the model learns from it.

The scores a model gives to events it has not yet trained on are an honest
estimate of how it does on new data, with no held-out set to maintain. Totals
run over the whole stream; AUC needs a sample, so it uses a sliding window of
the most recent events.

>>> m = PrequentialMetrics(window=100)
>>> m.update(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))
>>> m.summary()["auc"], m.summary()["accuracy"]
(1.0, 1.0)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

_EPS = 1e-7


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
    ranks = rankdata(scores)
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores, _EPS, 1 - _EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


class PrequentialMetrics:
    def __init__(self, window: int = 20_000):
        self.window = window
        self._scores = np.zeros(window, dtype=np.float32)
        self._labels = np.zeros(window, dtype=np.int8)
        self._filled = 0
        self._next = 0
        self.events = 0
        self.loss_sum = 0.0
        self.correct = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        self.events += len(scores)
        self.loss_sum += float(log_loss(scores, labels).sum())
        self.correct += int(((scores >= 0.5) == (labels == 1)).sum())
        for start in range(max(0, len(scores) - self.window), len(scores), self.window):
            piece = slice(start, start + self.window)
            self._write(scores[piece], labels[piece])

    def _write(self, scores: np.ndarray, labels: np.ndarray) -> None:
        n = len(scores)
        positions = (self._next + np.arange(n)) % self.window
        self._scores[positions] = scores
        self._labels[positions] = labels
        self._next = (self._next + n) % self.window
        self._filled = min(self.window, self._filled + n)

    def summary(self) -> dict:
        if self.events == 0:
            return {"events": 0}
        scores, labels = self._scores[: self._filled], self._labels[: self._filled]
        return {
            "events": self.events,
            "auc": roc_auc(scores, labels),
            "log_loss": self.loss_sum / self.events,
            "accuracy": self.correct / self.events,
            "window_events": self._filled,
            "window_log_loss": float(log_loss(scores, labels).mean()),
        }
