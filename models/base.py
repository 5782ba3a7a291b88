"""The one interface every model family meets, so the learner, the store and the server treat them alike.

An estimator sees only the feature matrix (``float32``, ``(n, n_features)``,
laid out as :class:`~hepstream.models.features.FeatureLayout` says), integer
labels ``0 .. classes-1`` and optional per-event weights. It never sees Kafka,
branches or the store.

* ``predict_proba(x)``: ``(n,)`` probabilities of class 1 for two classes,
  ``(n, classes)`` otherwise. Must not change ``x`` nor learn.
* ``learn(x, y, weights)``: one pass over an already shuffled batch. An
  estimator whose attribute ``scores_while_learning`` is true returns from it
  the probabilities each event had just before the model learned from it (as
  ``predict_proba`` gives them); the prequential metrics then need no scoring
  pass of their own. Otherwise the return value is ignored.
* ``state_dict()`` / ``load_state_dict(state)``: everything needed to carry
  on exactly where it stopped. ``checkpoint`` says how the store writes it:
  ``"torch"`` (tensors, saved with ``torch.save`` and read back with
  ``weights_only=True``) or ``"json"`` (plain JSON). Never pickle: a store may
  be shared and a checkpoint must not be able to run code when read.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Estimator(Protocol):
    checkpoint: Literal["torch", "json"]

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...

    def learn(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
