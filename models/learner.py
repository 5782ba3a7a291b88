"""Feature pipeline, network and optimiser as one object that learns from labelled batches.

It knows nothing of Kafka or Ray: the stream trainer feeds it, a GPU box can
drive it directly, and a checkpoint is its ``state_dict`` plus the trainer's
offsets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from hepstream.config import FeaturesConfig, ModelConfig, TrainingConfig
from hepstream.models.features import FeaturePipeline, RawFeatures
from hepstream.models.metrics import PrequentialMetrics
from hepstream.models.registry import build_model


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(choice)


class Learner:
    """Test-then-train: ``learn_many`` scores a batch, records the metrics, then takes optimiser steps."""

    def __init__(self, features: FeaturesConfig, model: ModelConfig, training: TrainingConfig):
        torch.manual_seed(training.seed)
        self.training = training
        self.device = pick_device(training.device)
        self.features = FeaturePipeline(features)
        self.model = build_model(model, self.features.n_features).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=training.learning_rate)
        self.loss = torch.nn.BCEWithLogitsLoss(reduction="none")
        self.metrics = PrequentialMetrics(training.metrics_window)
        self.events_seen = 0
        self._rng = np.random.default_rng(training.seed)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x).to(self.device))
        return torch.sigmoid(logits).float().cpu().numpy()

    def prepare(self, batch: pa.RecordBatch) -> RawFeatures:
        """Check and extract one batch's features; raises FeatureError naming the branch at fault."""
        return self.features.raw(batch)

    def learn_many(self, raws: list[RawFeatures], labels: list[np.ndarray]) -> None:
        """Score every prepared batch first (prequential metrics), then learn from all of them shuffled.

        Chunks from per-file labelled datasets hold one class each; learning
        several chunks as one shuffled set keeps the optimiser from swinging
        from class to class.
        """
        for raw in raws:
            self.features.learn(raw)
        x = np.concatenate([self.features.normalise(raw) for raw in raws])
        y = np.concatenate(labels).astype(np.float32, copy=False)
        self.metrics.update(self.predict_features(x), y)
        order = self._rng.permutation(len(x))
        self.learn_features(x[order], y[order])

    def learn_features(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Optimiser steps over ``x`` in mini-batches; the in-memory benchmark calls this directly."""
        self.model.train()
        inputs = torch.from_numpy(x).to(self.device)
        targets = torch.from_numpy(np.asarray(labels, dtype=np.float32)).to(self.device)
        event_weights = None if weights is None else torch.from_numpy(np.asarray(weights, np.float32)).to(self.device)
        size = self.training.batch_size
        for start in range(0, len(x), size):
            part = slice(start, start + size)
            losses = self.loss(self.model(inputs[part]), targets[part])
            if event_weights is not None:
                losses = losses * event_weights[part]
            self.optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            self.optimizer.step()
        self.events_seen += len(x)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "features": self.features.state_dict(),
            "events_seen": self.events_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.features.load_state_dict(state["features"])
        self.events_seen = int(state["events_seen"])
