"""The contract every model kind meets (river's habit): register a kind in MODEL_KINDS and it is tested here.

Input left unchanged, state round-trips through the store to the server's
LoadedModel, seeded runs reproduce, the model learns, several classes and
event weights work.
"""

import numpy as np
import pyarrow as pa
import pytest

from hepstream.config import FeaturesConfig, JaggedFeature, TrainingConfig
from hepstream.model_kinds import MODEL_KINDS, model_config
from hepstream.models.learner import Learner
from hepstream.models.metrics import multiclass_auc
from hepstream.models.store import ModelStore

FEATURES = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt", "Muon_eta"], length=3,
                                                                   sort_by="Muon_pt")], weight="w")
FACTORIES = {"user": "tests.models.user_models:linear", "user-json": "tests.models.user_models:centroid"}
CASES = [k for k in MODEL_KINDS if k != "user"] + list(FACTORIES)
# Smaller or quicker than the defaults; a kind not named here is tested with its defaults.
SMALL = {"mlp": {"hidden": [16]}, "deepsets": {"hidden": [16], "set_hidden": [8]},
         "hoeffding_tree": {"options": {"grace_period": 50}}, "arf": {"options": {"n_models": 3}}}


def _model(case, classes=2):
    if case in FACTORIES:
        return model_config({"name": "c", "kind": "user", "classes": classes, "factory": FACTORIES[case]})
    return model_config({"name": "c", "kind": case, "classes": classes, **SMALL.get(case, {})})


def _batch(rng, n, classes=2):
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


def _trained(case, classes=2, seed=0, batches=4, **training):
    """A learner of ``case`` after ``batches`` batches; ``training`` overrides the CPU settings."""
    settings = {"seed": seed, "device": "cpu", "batch_size": 64, "learning_rate": 0.01, **training}
    learner = Learner(FEATURES, _model(case, classes), TrainingConfig(**settings))
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        learner.learn_many([learner.prepare(*_batch(rng, 400, classes))])
    return learner


@pytest.mark.parametrize("case", CASES)
def test_prediction_and_learning_leave_the_input_unchanged(case):
    learner = _trained(case, batches=1)
    x = learner.features.transform(_batch(np.random.default_rng(1), 50)[0])
    before = x.copy()
    learner.estimator.predict_proba(x)
    learner.estimator.learn(x, np.zeros(len(x), np.int64), None)
    np.testing.assert_array_equal(x, before)


def _published(learner, folder):
    """The learner's state published to a store in ``folder`` and loaded back as the server loads it."""
    store = ModelStore(folder, "c")
    meta = {"features": FEATURES.model_dump(mode="json"), "feature_state": learner.features.state_dict(),
            "model": learner.model_config.model_dump(mode="json"), "events_seen": learner.events_seen}
    return store.load(store.publish(learner.estimator.state_dict(), meta, {}, learner.estimator.checkpoint))


@pytest.mark.parametrize("case", CASES)
def test_state_round_trips_through_the_store_to_the_server(case, tmp_path):
    learner = _trained(case)
    batch, _ = _batch(np.random.default_rng(2), 200)
    served = _published(learner, tmp_path).predict(batch)
    np.testing.assert_allclose(served, learner.estimator.predict_proba(learner.features.transform(batch)), rtol=1e-6)
    assert served.shape == (200,)


@pytest.mark.parametrize("case", CASES)
def test_seeded_runs_reproduce_and_learn(case):
    batch, y = _batch(np.random.default_rng(3), 400)
    first, again = _trained(case), _trained(case)
    scores = first.estimator.predict_proba(first.features.transform(batch))
    np.testing.assert_array_equal(scores, again.estimator.predict_proba(again.features.transform(batch)))
    assert multiclass_auc(scores, y) > 0.7, case


@pytest.mark.parametrize("case", [c for c in CASES if c != "user-json"] + ["user-json"])
def test_several_classes(case):
    learner = _trained(case, classes=3, batches=3)
    batch, y = _batch(np.random.default_rng(4), 300, classes=3)
    scores = learner.estimator.predict_proba(learner.features.transform(batch))
    assert scores.shape == (300, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)
    assert learner.metrics.summary()["accuracy"] > 1 / 3


def test_event_weights_change_what_a_torch_model_learns():
    learner = Learner(FEATURES, _model("mlp"), TrainingConfig(device="cpu"))
    rng = np.random.default_rng(5)
    batch, y = _batch(rng, 300)
    x = learner.features.transform(batch)
    state = {k: v.clone() for k, v in learner.estimator.module.state_dict().items()}
    learner.estimator.learn(x, y, np.ones(len(y), np.float32))
    unweighted = learner.estimator.predict_proba(x)
    learner.estimator.module.load_state_dict(state)
    learner.estimator.optimizer.state.clear()
    learner.estimator.learn(x, y, np.where(y == 1, 5.0, 0.1).astype(np.float32))
    assert learner.estimator.predict_proba(x).mean() > unweighted.mean()
