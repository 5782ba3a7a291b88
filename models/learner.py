"""Feature pipeline, estimator, prequential metrics and drift detector as one object that learns.

It knows nothing of Kafka or Ray: the stream trainer feeds it, a GPU box can
drive it directly, and a checkpoint is its state plus the trainer's offsets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig, ModelConfig, TrainingConfig
from hepstream.models.drift import LossDrift
from hepstream.models.features import FeaturePipeline
from hepstream.models.metrics import PrequentialMetrics
from hepstream.models.preparation import Prepared, lay_out, prepare_chunk  # noqa: F401 (Prepared: callers import it from here)
from hepstream.models.registry import build_estimator


class Preparation(NamedTuple):
    """What preparing a group changes: the normaliser's statistics and the shuffle generator."""

    features: FeaturePipeline
    rng: np.random.Generator


class Group(NamedTuple):
    """Chunks ready to learn: shuffled features, labels and weights, and the preparation's state after them."""

    x: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    state: dict | None


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
        return prepare_chunk(self.features, self.model_config.classes, batch, labels)

    def learn_many(self, prepared: list[Prepared]) -> None:
        """Score every prepared chunk first (prequential metrics, drift), then learn from all of them shuffled.

        Chunks from per-file labelled datasets hold one class each; learning
        several chunks as one shuffled set keeps the optimiser from swinging
        from class to class.
        """
        self.learn_group(self.prepare_group(prepared))

    def read_ahead(self) -> Preparation:
        """A copy of the normaliser and the shuffle generator, for preparing groups ahead of learning them."""
        features = FeaturePipeline(self.features.spec)
        features.load_state_dict(self.features.state_dict())
        rng = np.random.default_rng()
        rng.bit_generator.state = self._rng.bit_generator.state
        return Preparation(features, rng)

    def prepare_group(self, prepared: list[Prepared], ahead: Preparation | None = None) -> Group:
        """Absorb the chunks into the normaliser, lay out their feature matrix and shuffle it.

        With ``ahead`` (from :meth:`read_ahead`), on that copy, in a thread
        of its own while the learner trains on the previous group: the group
        then carries the copy's state, which the learner adopts once it has
        learned the group, so a checkpoint never holds statistics of events not learned yet.
        """
        features, rng = (self.features, self._rng) if ahead is None else (ahead.features, ahead.rng)
        for chunk in prepared:
            features.learn(chunk.features)
        order = rng.permutation(sum(chunk.features.events for chunk in prepared))  # so the metrics window mixes
        state = None if ahead is None else {"features": features.state_dict(), "rng": rng.bit_generator.state}
        return Group(*lay_out(features, prepared, order), state)

    def learn_group(self, group: Group) -> None:
        """Score a prepared group (prequential metrics, drift) and learn from it: each event is scored
        before the model learns it, in the learning pass itself when the estimator can do that."""
        events_seen = self.events_seen
        if getattr(self.estimator, "scores_while_learning", False):
            scores = self.learn_features(group.x, group.labels, group.weights)
        else:
            scores = self.estimator.predict_proba(group.x)
            self.learn_features(group.x, group.labels, group.weights)
        losses = self.metrics.update(scores, group.labels)
        self.since_checkpoint.update(scores, group.labels)
        self.drift.update(losses, events_seen)
        if group.state is not None:
            self.features.load_state_dict(group.state["features"])
            self._rng.bit_generator.state = group.state["rng"]

    def learn_features(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None):
        """Learn from a feature matrix already made (by :meth:`prepare_group`, or by a caller holding its events
        in memory), without scoring or metrics; returns what the estimator's ``learn`` returns."""
        scores = self.estimator.learn(x, labels, weights)
        self.events_seen += len(x)
        return scores

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
