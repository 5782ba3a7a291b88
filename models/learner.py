"""Feature pipeline, estimator, prequential metrics and drift detector as one object that learns.

It knows nothing of Kafka or Ray: the stream trainer feeds it, a GPU box can
drive it directly, and a checkpoint is its state plus the trainer's offsets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig, ModelConfig, TrainingConfig
from hepstream.models.drift import LossDrift
from hepstream.models.features import Extracted, FeatureError, FeaturePipeline
from hepstream.models.metrics import PrequentialMetrics
from hepstream.models.registry import build_estimator


class Prepared:
    """One chunk, checked and ready to learn: extracted features, labels and optional weights."""

    __slots__ = ("features", "labels", "weights")

    def __init__(self, features: Extracted, labels: np.ndarray, weights: np.ndarray | None):
        self.features, self.labels, self.weights = features, labels, weights


class Learner:
    """Test-then-train: ``learn_many`` scores a batch, records the metrics, then learns from it."""

    def __init__(self, features: FeaturesConfig, model: ModelConfig, training: TrainingConfig):
        self.model_config = model
        self.features = FeaturePipeline(features)
        self.estimator = build_estimator(model, self.features, training)
        self.metrics = PrequentialMetrics(training.metrics_window, model.classes)
        self.since_checkpoint = PrequentialMetrics(training.metrics_window, model.classes)
        self.drift = LossDrift(training.drift_delta)
        self.events_seen = 0
        self._rng = np.random.default_rng(training.seed)

    def prepare(self, batch: pa.RecordBatch, labels: np.ndarray) -> Prepared:
        """Check one batch; raises FeatureError naming the branch at fault (labels included)."""
        labels = np.asarray(labels)
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise FeatureError("label", "labels must be whole numbers 0 .. classes-1")
        labels = labels.astype(np.int64)
        classes = self.model_config.classes
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise FeatureError("label", f"labels must lie in 0 .. {classes - 1}, got {labels.min()} .. {labels.max()}")
        return Prepared(self.features.extract(batch), labels, self.features.weights(batch))

    def learn_many(self, prepared: list[Prepared]) -> None:
        """Score every prepared chunk first (prequential metrics, drift), then learn from all of them shuffled.

        Chunks from per-file labelled datasets hold one class each; learning
        several chunks as one shuffled set keeps the optimiser from swinging
        from class to class.
        """
        for chunk in prepared:
            self.features.learn(chunk.features)
        x = np.concatenate([self.features.matrix(chunk.features) for chunk in prepared])
        y = np.concatenate([chunk.labels for chunk in prepared])
        weights = None
        if any(chunk.weights is not None for chunk in prepared):
            weights = np.concatenate([chunk.weights for chunk in prepared])
        order = self._rng.permutation(len(x))  # before scoring too, so the metrics window mixes the chunks
        x, y = x[order], y[order]
        weights = None if weights is None else weights[order]
        scores = self.estimator.predict_proba(x)
        losses = self.metrics.update(scores, y)
        self.since_checkpoint.update(scores, y)
        self.drift.update(losses, self.events_seen)
        self.learn_features(x, y, weights)

    def learn_features(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Learn from a ready feature matrix; the in-memory benchmark calls this directly."""
        self.estimator.learn(x, labels, weights)
        self.events_seen += len(x)

    def metrics_summary(self) -> dict:
        return {**self.metrics.summary(), "drift": self.drift.summary()}

    def state_dict(self) -> dict:
        """JSON-able state (the estimator's too when it checkpoints as JSON) and, apart, its tensors."""
        return {"features": self.features.state_dict(), "events_seen": self.events_seen,
                "drift": self.drift.state_dict(), "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.features.load_state_dict(state["features"])
        self.events_seen = int(state["events_seen"])
        if "drift" in state:
            self.drift.load_state_dict(state["drift"])
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
