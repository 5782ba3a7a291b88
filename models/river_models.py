"""River classifiers as estimators: logistic regression, Hoeffding tree, adaptive random forest.

River learns from dicts of named features; the feature matrix's columns get
the pipeline's names (``Muon_pt[0]``, ...). Models with ``learn_many``
(logistic regression) learn a whole batch as one pandas DataFrame; the tree
models only have ``learn_one`` in river 0.26, so they learn event by event
through an adapter (orders of magnitude slower than the torch models, figures
in ``docs/training.md``: they suit smaller or slower streams). A checkpoint is
the model as JSON (:mod:`~hepstream.models.river_state`), never a pickle.
"""

from __future__ import annotations

import inspect

import numpy as np

from hepstream.models import river_state


def _river_class(kind: str, classes: int):
    from river import forest, linear_model, tree

    if kind == "logistic":
        return linear_model.LogisticRegression if classes == 2 else linear_model.SoftmaxRegression
    return {"hoeffding_tree": tree.HoeffdingTreeClassifier, "arf": forest.ARFClassifier}[kind]


def build_river(kind: str, classes: int, options: dict, seed: int):
    """The river model of ``kind`` built with ``options`` (its own hyper-parameter names), seeded when it takes a seed."""
    cls = _river_class(kind, classes)
    if "seed" in inspect.signature(cls).parameters:
        options = {"seed": seed, **options}
    return cls(**options)


class RiverEstimator:
    checkpoint = "json"

    def __init__(self, model, feature_names: list[str], classes: int):
        self.model = model
        self.names = feature_names
        self.classes = classes

    def _label(self, y) -> bool | int:
        return bool(y) if self.classes == 2 else int(y)

    def _rows(self, x: np.ndarray) -> list[dict]:
        return [dict(zip(self.names, row)) for row in x.tolist()]

    def _frame(self, x: np.ndarray):
        import pandas as pd

        return pd.DataFrame(x, columns=self.names)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        labels = [self._label(k) for k in range(self.classes)]
        if hasattr(self.model, "predict_proba_many"):
            frame = self.model.predict_proba_many(self._frame(x))
            probabilities = np.stack([frame[k].to_numpy() if k in frame else np.zeros(len(x)) for k in labels], 1)
        else:
            answers = [self.model.predict_proba_one(row) for row in self._rows(x)]
            probabilities = np.array([[a.get(k, 0.0) for k in labels] for a in answers], dtype=np.float64)
        totals = probabilities.sum(axis=1, keepdims=True)
        probabilities = np.where(totals > 0, probabilities / np.where(totals > 0, totals, 1), 1.0 / self.classes)
        probabilities = probabilities.astype(np.float32)
        return probabilities[:, 1] if self.classes == 2 else probabilities

    def learn(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> None:
        import pandas as pd

        labels = [self._label(v) for v in np.asarray(y).tolist()]
        if hasattr(self.model, "learn_many"):
            w = 1 if weights is None else pd.Series(weights)
            self.model.learn_many(self._frame(x), pd.Series(labels), w=w)
            return
        takes_weight = "w" in inspect.signature(self.model.learn_one).parameters
        for i, (row, label) in enumerate(zip(self._rows(x), labels)):
            if takes_weight and weights is not None:
                self.model.learn_one(row, label, w=float(weights[i]))
            else:
                self.model.learn_one(row, label)

    def state_dict(self) -> dict:
        return river_state.dumps(self.model)

    def load_state_dict(self, state: dict) -> None:
        self.model = river_state.loads(state)
