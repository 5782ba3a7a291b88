"""The learner without Kafka: scoring inside the learning pass, and groups prepared ahead of learning."""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from hepstream.config import FeaturesConfig, JaggedFeature, TrainingConfig
from hepstream.model_kinds import MLPConfig
from hepstream.models.learner import Learner


def _learner(**model) -> Learner:
    features = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt"], length=2)])
    return Learner(features, MLPConfig(name="t", **model), TrainingConfig(device="cpu", batch_size=16, seed=3))


def _batch(seed: int, events: int = 40) -> tuple[pa.RecordBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    muons = [list(rng.exponential(30, rng.integers(0, 4))) for _ in range(events)]
    batch = pa.record_batch({"MET_pt": rng.exponential(40, events), "Muon_pt": muons})
    return batch, rng.integers(0, 2, events)


def test_learning_pass_gives_each_event_the_score_it_had_before_its_step():
    learner = _learner()
    estimator = learner.estimator
    assert estimator.scores_while_learning
    x = np.random.default_rng(0).normal(size=(40, learner.features.n_features)).astype(np.float32)
    y = np.arange(40) % 2
    expected, shadow = [], copy.deepcopy(estimator)
    for start in range(0, 40, 16):  # the same steps, scoring each minibatch first
        part = slice(start, start + 16)
        expected.append(shadow.predict_proba(x[part]))
        shadow.learn(x[part], y[part], None)
    scores = estimator.learn(x, y, None)
    np.testing.assert_allclose(scores, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores, estimator.predict_proba(x))  # it did learn after scoring


def test_models_with_dropout_are_scored_by_a_pass_of_their_own(monkeypatch):
    learner = _learner(dropout=0.5)
    assert not learner.estimator.scores_while_learning
    calls = []
    predict = learner.estimator.predict_proba
    monkeypatch.setattr(learner.estimator, "predict_proba", lambda x: calls.append(len(x)) or predict(x))
    batch, labels = _batch(1)
    learner.learn_many([learner.prepare(batch, labels)])
    assert calls == [40]
    assert learner.metrics.summary()["events"] == 40


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_groups_prepared_ahead_learn_as_groups_prepared_in_place(dropout):
    """The read-ahead path (prepare on a copy, adopt its state when learned) equals the plain one."""
    torch.manual_seed(0)
    plain = _learner(dropout=dropout)
    torch.manual_seed(0)
    ahead_learner = _learner(dropout=dropout)
    chunks = [_batch(seed) for seed in range(4)]
    ahead = ahead_learner.read_ahead()
    groups = [ahead_learner.prepare_group([ahead_learner.prepare(b, y)], ahead) for b, y in chunks]
    assert ahead_learner.features.moments.count.sum() == 0  # nothing adopted before it is learned
    for (batch, labels), group in zip(chunks, groups):
        torch.manual_seed(1)
        plain.learn_many([plain.prepare(batch, labels)])
        torch.manual_seed(1)
        ahead_learner.learn_group(group)
        assert ahead_learner.features.state_dict() == plain.features.state_dict()
    assert ahead_learner.state_dict()["rng"] == plain.state_dict()["rng"]
    assert ahead_learner.metrics.summary() == plain.metrics.summary()
    for mine, theirs in zip(ahead_learner.estimator.module.parameters(), plain.estimator.module.parameters()):
        torch.testing.assert_close(mine, theirs)
