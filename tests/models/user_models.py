"""User model factories for the tests, as a physicist would write them (see docs/training.md)."""

import numpy as np
import torch


def linear(layout, classes, width=1):
    """A torch user model: one linear layer over every feature."""
    return torch.nn.Sequential(torch.nn.Linear(layout.n_features, 1 if classes == 2 else classes),
                               torch.nn.Flatten(0) if classes == 2 else torch.nn.Identity())


class CentroidModel:
    """A JSON user model: scores by distance to each class's running mean feature vector."""

    checkpoint = "json"

    def __init__(self, layout, classes):
        self.classes = classes
        self.sums = np.zeros((classes, layout.n_features))
        self.counts = np.zeros(classes)

    def predict_proba(self, x):
        centres = self.sums / np.maximum(self.counts, 1)[:, None]
        logits = -((x[:, None, :] - centres[None]) ** 2).sum(-1)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p[:, 1] if self.classes == 2 else p).astype(np.float32)

    def learn(self, x, y, weights):
        w = np.ones(len(y)) if weights is None else weights
        for k in range(self.classes):
            self.sums[k] += (x[y == k] * w[y == k, None]).sum(0)
            self.counts[k] += w[y == k].sum()

    def state_dict(self):
        return {"sums": self.sums.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state):
        self.sums, self.counts = np.array(state["sums"]), np.array(state["counts"])


def centroid(layout, classes):
    return CentroidModel(layout, classes)
