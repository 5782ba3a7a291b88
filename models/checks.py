"""The estimator contract as checks a user runs on their own model (river's ``utils.estimator_checks``).

Every built-in kind passes them (``tests/models/test_contract.py``); a user
model that passes them trains, checkpoints and serves like one. Each check
trains a fresh model on CPU on synthetic events (:data:`FEATURES`, labels
that shift ``MET_pt`` and the muons' ``pt``) and raises ``AssertionError``
saying what broke:

* ``input_unchanged``: ``predict_proba`` and ``learn`` leave the matrix alone;
* ``state_round_trips``: the state published to a model store and loaded as
  the server loads it predicts what the trained model predicts;
* ``seeded_runs_reproduce``: two runs with one seed give identical scores;
* ``learns``: scores separate the classes (AUC above 0.7);
* ``several_classes``: three classes give ``(n, 3)`` probabilities that sum to 1.

A user model is named as in the configuration, ``package.module:function``
(the server rebuilds it from that path, so the checks do too):

>>> from hepstream.model_kinds import model_config
>>> [check.name for check in yield_checks(model_config({"kind": "logistic"}))]
['input_unchanged', 'state_round_trips', 'seeded_runs_reproduce', 'learns', 'several_classes']
>>> check_estimator(model_config({"kind": "logistic"}))
>>> check_estimator("mypackage.models:centroid")  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig, JaggedFeature, ModelConfig, TrainingConfig
from hepstream.model_kinds import model_config
from hepstream.models.learner import Learner
from hepstream.models.metrics import multiclass_auc
from hepstream.models.store import LoadedModel, ModelStore
from hepstream.models.version_meta import VersionMeta

FEATURES = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt", "Muon_eta"], length=3,
                                                                   sort_by="Muon_pt")], weight="w")


def synthetic_events(rng: np.random.Generator, n: int, classes: int = 2) -> tuple[pa.RecordBatch, np.ndarray]:
    """Events whose class shifts MET and the muons' pt; muon counts vary, so padding matters."""
    y = rng.integers(0, classes, n)
    counts = rng.integers(0, 5, n)
    pt = rng.exponential(20, counts.sum()) + 10 * np.repeat(y, counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    batch = pa.record_batch({
        "MET_pt": rng.normal(30 + 15 * y, 10),
        "Muon_pt": pa.ListArray.from_arrays(offsets, pa.array(pt, pa.float32())),
        "Muon_eta": pa.ListArray.from_arrays(offsets, pa.array(rng.normal(0, 1.5, counts.sum()), pa.float32())),
        "w": rng.uniform(0.5, 1.5, n),
    })
    return batch, y


def trained(model: ModelConfig, seed: int = 0, batches: int = 4, **training) -> Learner:
    """A learner of ``model`` after ``batches`` batches of 400 synthetic events; on CPU unless ``training`` says."""
    settings = {"seed": seed, "device": "cpu", "batch_size": 64, "learning_rate": 0.01, **training}
    learner = Learner(FEATURES, model, TrainingConfig(**settings))
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        learner.learn_many([learner.prepare(*synthetic_events(rng, 400, model.classes))])
    return learner


def published(learner: Learner, folder: str | Path) -> LoadedModel:
    """The learner's state published to a model store in ``folder`` and loaded back as the server loads it."""
    store = ModelStore(folder, learner.model_config.name)
    meta = VersionMeta(features=FEATURES.model_dump(mode="json"), feature_state=learner.features.state_dict(),
                       model=learner.model_config.model_dump(mode="json"), events_seen=learner.events_seen)
    return store.load(store.publish(learner.estimator.state_dict(), meta, {}, learner.estimator.checkpoint))


def _scores(learner: Learner, batch: pa.RecordBatch) -> np.ndarray:
    return learner.estimator.predict_proba(learner.features.transform(batch))


def check_input_unchanged(model: ModelConfig) -> None:
    learner = trained(model, batches=1)
    x = learner.features.transform(synthetic_events(np.random.default_rng(1), 50)[0])
    before = x.copy()
    learner.estimator.predict_proba(x)
    np.testing.assert_array_equal(x, before, err_msg="predict_proba changed its input")
    learner.estimator.learn(x, np.zeros(len(x), np.int64), None)
    np.testing.assert_array_equal(x, before, err_msg="learn changed its input")


def check_state_round_trips(model: ModelConfig) -> None:
    learner = trained(model)
    batch, _ = synthetic_events(np.random.default_rng(2), 200)
    with tempfile.TemporaryDirectory(prefix="hepstream-check-") as folder:
        served = published(learner, folder).predict(batch)
    np.testing.assert_allclose(served, _scores(learner, batch), rtol=1e-6,
                               err_msg="the model loaded from the store predicts otherwise than the trained one")
    assert served.shape == (200,), f"two classes must give (n,) scores, got {served.shape}"


def check_seeded_runs_reproduce(model: ModelConfig) -> None:
    batch, _ = synthetic_events(np.random.default_rng(3), 400)
    np.testing.assert_array_equal(_scores(trained(model), batch), _scores(trained(model), batch),
                                  err_msg="two runs with training.seed 0 scored differently")


def check_learns(model: ModelConfig) -> None:
    batch, y = synthetic_events(np.random.default_rng(3), 400)
    auc = multiclass_auc(_scores(trained(model), batch), y)
    assert auc > 0.7, f"AUC {auc:.3f} after 1600 events of well separated classes; expected above 0.7"


def check_several_classes(model: ModelConfig) -> None:
    learner = trained(model.model_copy(update={"classes": 3}), batches=3)
    scores = _scores(learner, synthetic_events(np.random.default_rng(4), 300, classes=3)[0])
    assert scores.shape == (300, 3), f"three classes must give (n, 3) probabilities, got {scores.shape}"
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4, err_msg="class probabilities do not sum to 1")
    accuracy = learner.metrics.summary()["accuracy"]
    assert accuracy > 1 / 3, f"accuracy {accuracy:.3f} on three classes is no better than chance"


CHECKS = (check_input_unchanged, check_state_round_trips, check_seeded_runs_reproduce, check_learns,
          check_several_classes)


@dataclass(frozen=True)
class Check:
    """One check bound to one model: call it to run it; ``name`` is the check's name without ``check_``."""

    function: Callable[[ModelConfig], None]
    model: ModelConfig

    @property
    def name(self) -> str:
        return self.function.__name__.removeprefix("check_")

    def __call__(self) -> None:
        self.function(self.model)

    def __str__(self) -> str:
        return self.name


def _model_config(model: ModelConfig | str) -> ModelConfig:
    return model_config({"name": "check", "kind": "user", "factory": model}) if isinstance(model, str) else model


def yield_checks(model: ModelConfig | str) -> Iterator[Check]:
    """Every check of the contract for ``model`` (a configuration, or a ``package.module:function`` factory).

    One test per check, with pytest::

        @pytest.mark.parametrize("check", yield_checks("mypackage.models:centroid"), ids=str)
        def test_contract(check):
            check()
    """
    config = _model_config(model)
    return (Check(function, config) for function in CHECKS)


def check_estimator(model: ModelConfig | str) -> None:
    """Run every check on ``model``; the first that fails raises ``AssertionError`` naming it and the model."""
    for check in yield_checks(model):
        try:
            check()
        except AssertionError as error:
            what = check.model.factory or check.model.kind
            raise AssertionError(f"{what} fails the estimator check {check.name!r}: {error}") from error
